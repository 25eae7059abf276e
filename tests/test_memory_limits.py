"""Heap limits under pytest-memray (`@pytest.mark.limit_memory`): everything a test allocates
and still holds at its high-water mark (the core's malloc and Python's allocator alike) must stay
under the limit. Inputs are built in fixtures, outside the measured test body. In pytest-memray
1.11 the marker is enforced even without --memray; the module is skipped when the plugin is not
importable or not active (e.g. `-p no:memray` under ASan)."""

import pytest

pytest.importorskip("pytest_memray")

import melvin  # noqa: E402
from conftest import english_text  # noqa: E402


@pytest.fixture(autouse=True)
def _memray_active(request):
    if not request.config.pluginmanager.hasplugin("memray"):
        pytest.skip("the pytest-memray plugin is not active")


_text = english_text


@pytest.fixture(scope="module")
def line_10mb() -> bytes:
    return _text(10 << 20)


@pytest.fixture(scope="module")
def big_graph():
    """A large-ish graph: 4 MB of text, 64 MB budget."""
    g = melvin.Graph(melvin.Limits(max_memory="64M"))
    text = _text(4 << 20, seed=2)
    for i in range(0, len(text), 200):
        g.feed(text[i:i + 200])
    return g


# 1 MB graph budget; the graph's tables, one realloc in flight and pruning's shrinking fit in
# 2 MB, so 6 MB leaves room for the interpreter's own churn.
@pytest.mark.limit_memory("6 MB")
def test_10mb_single_line_small_budget(line_10mb):
    g = melvin.Graph(melvin.Limits(max_memory="1M"))
    g.feed(line_10mb)
    s = g.stats()
    assert s["bytes_fed"] == len(line_10mb) and s["memory_bytes"] <= 1 << 20


# The graph of one repeated 240-byte line converges at ~70 KB (default limits).
@pytest.mark.limit_memory("2 MB")
def test_same_line_20000_times():
    line = (b"The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat "
            b"by the door. " * 3)[:240]
    g = melvin.Graph()
    for _ in range(20000):
        g.feed(line)
    assert g.stats()["memory_bytes"] < 1 << 20


# Generation allocates only transient Python objects (candidate dicts, the output); predict adds
# one count array over the nodes. Nothing is kept between calls.
@pytest.mark.limit_memory("4 MB")
def test_generate_on_a_large_graph(big_graph):
    for i in range(50):
        out = big_graph.generate(b"The ", max_bytes=256)
        assert len(out) <= 256
        big_graph.predict(b"The statement", k=5)
    # large in edges: with word patterns (Limits.word_tokens) its nodes stay near the word list's
    assert big_graph.stats()["edges"] > 1_000_000
