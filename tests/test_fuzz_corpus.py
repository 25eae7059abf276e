"""Replay every saved fuzz input (fuzz/corpus/NAME/*: seeds and findings named crash-*) through
the same pure functions the atheris fuzzers call (fuzz/targets.py), so every finding stays a
permanent regression test."""
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
CORPUS = FUZZ / "corpus"
NAMES = ("feed", "ops", "load", "inputs")

if str(FUZZ) not in sys.path:
    sys.path.insert(0, str(FUZZ))
import targets  # noqa: E402  (fuzz/targets.py)


def _cases():
    cases = []
    for name in NAMES:
        folder = CORPUS / name
        if folder.is_dir():
            cases += [(name, path) for path in sorted(folder.iterdir()) if path.is_file()]
    return cases


CASES = _cases()


def test_every_fuzzer_has_seeds():
    for name in NAMES:
        assert any(n == name for n, _ in CASES), f"fuzz/corpus/{name}/ is empty"


@pytest.mark.parametrize("name,path", CASES, ids=[f"{n}/{p.name}" for n, p in CASES])
def test_replay(name, path):
    getattr(targets, f"fuzz_{name}")(path.read_bytes())
