"""Shared fixtures: the real-text corpus from ../shared/corpus (tests using it skip if absent)."""
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def corpus_lines(name: str = "wiki_train.txt") -> list[bytes]:
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"corpus file {path} is absent")
    return [line for line in path.read_bytes().split(b"\n") if line]


@pytest.fixture(scope="session")
def wiki_lines() -> list[bytes]:
    return corpus_lines("wiki_train.txt")


@pytest.fixture(scope="session")
def heldout_lines() -> list[bytes]:
    return corpus_lines("wiki_heldout.txt")
