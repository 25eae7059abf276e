"""Shared fixtures: the real-text corpus from ../shared/corpus (tests using it skip if absent)."""
import random
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


def english_text(n_bytes: int, seed: int = 0) -> bytes:
    """Deterministic English-like text of exactly n_bytes, without newlines: words drawn from
    CPython's pydoc topics (they ship with every Python)."""
    from pydoc_data import topics

    words = sorted({w for name in sorted(topics.topics)[:60]
                    for w in topics.topics[name].encode("utf-8").split() if w.isalpha()})
    rnd = random.Random(seed)
    parts, size = [], 0
    while size < n_bytes:
        chunk = b" ".join(rnd.choices(words, k=4096)) + b" "
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)[:n_bytes]
