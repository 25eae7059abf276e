"""Every hard cap of Limits, hit on purpose: training prunes or stops growing, never overshoots."""
import pytest

import melvin


def _levels(g):
    return max(g.stats()["hierarchy_levels"], default=0)


def _payloads(g):
    return [g._core.node_payload(v) for v in range(g.stats()["nodes"])]


def _feed_all(g, lines, check_every=50, each=None):
    for i, line in enumerate(lines):
        g.feed(line)
        if each is not None:
            each(g)
        if i % check_every == 0:
            g.check()
    g.check()


@pytest.mark.parametrize("budget", ["64K", "256K", "1M"])
def test_max_memory_prunes_and_holds(wiki_lines, budget):
    lim = melvin.Limits(max_memory=budget)
    g = melvin.Graph(lim)
    peak = 0

    def each(g):
        nonlocal peak
        m = g.stats()["memory_bytes"]
        assert m <= lim.max_memory
        peak = max(peak, m)

    _feed_all(g, wiki_lines[:1200], each=each)
    s = g.stats()
    assert s["prunes"] > 0
    assert s["peak_memory_bytes"] <= lim.max_memory
    assert s["bytes_fed"] == sum(len(x) for x in wiki_lines[:1200])
    out = g.generate(b"The ")
    assert isinstance(out, bytes) and len(out) > 0
    assert g.predict(b"The ", k=3)
    # still learns after pruning
    for _ in range(10):
        g.feed(b"zebra crossing quietly")
    g.check()
    assert g.generate(b"zebra crossing") == b" quietly"


def test_max_edges_prunes_and_holds(wiki_lines):
    lim = melvin.Limits(max_edges=2000)
    g = melvin.Graph(lim)
    _feed_all(g, wiki_lines[:400],
              each=lambda g: (g.stats()["edges"] <= 2000) or pytest.fail("edges above max_edges"))
    s = g.stats()
    assert s["prunes"] > 0 and s["pruned_edges"] > 0
    assert s["edges"] <= 2000
    assert g.generate(b"The ") != b"" or g.predict(b"The ")


def test_max_edges_minimum(wiki_lines):
    g = melvin.Graph(melvin.Limits(max_edges=64, context_len=1, byte_context=()))
    _feed_all(g, wiki_lines[:50], check_every=5,
              each=lambda g: (g.stats()["edges"] <= 64) or pytest.fail("edges above max_edges"))
    assert g.stats()["prunes"] > 0


def test_max_nodes_stops_hierarchy(wiki_lines):
    lim = melvin.Limits(max_nodes=512)
    g = melvin.Graph(lim)
    _feed_all(g, wiki_lines[:300],
              each=lambda g: (g.stats()["nodes"] <= 512) or pytest.fail("nodes above max_nodes"))
    s = g.stats()
    assert s["nodes"] <= 512
    assert s["hierarchy_nodes"] > 0
    unlimited = melvin.Graph()
    for line in wiki_lines[:300]:
        unlimited.feed(line)
    assert unlimited.stats()["nodes"] > 512          # the cap did bite
    assert isinstance(g.generate(b"The "), bytes)


@pytest.mark.parametrize("cap", [2, 4, 7])
def test_max_payload(wiki_lines, cap):
    g = melvin.Graph(melvin.Limits(max_payload=cap))
    _feed_all(g, wiki_lines[:150])
    for _ in range(30):
        g.feed(b"abcdefghijklmnopqrstuvwxyz")
    g.check()
    assert max(len(p) for p in _payloads(g)) <= cap
    assert g.stats()["hierarchy_nodes"] > 0
    assert g.generate(b"abcdefghij") == b"klmnopqrstuvwxyz"


@pytest.mark.parametrize("cap", [1, 2, 3])
def test_max_levels(wiki_lines, cap):
    g = melvin.Graph(melvin.Limits(max_levels=cap))
    _feed_all(g, wiki_lines[:150])
    for _ in range(30):
        g.feed(b"first then second then third then done")
    g.check()
    assert 1 <= _levels(g) <= cap
    unlimited = melvin.Graph()
    for line in wiki_lines[:150]:
        unlimited.feed(line)
    assert _levels(unlimited) > cap


def test_budget_below_base_nodes_raises_cap_exceeded():
    """Limits refuses budgets under 64K; below that the core itself must refuse with CapExceeded
    (a MemoryError), never half-build a graph."""
    with pytest.raises(ValueError, match="max_memory"):
        melvin.Limits(max_memory=16 << 10)
    for tiny in (1, 1000, 16 << 10):
        lim = melvin.Limits(max_memory="64K")
        object.__setattr__(lim, "max_memory", tiny)     # bypass validation to reach the core
        with pytest.raises(melvin.CapExceeded) as info:
            melvin.Graph(lim)
        assert isinstance(info.value, MemoryError)
        assert isinstance(info.value, melvin.MelvinError)
        assert "max_memory" in str(info.value)


def test_smallest_budget_works(wiki_lines):
    g = melvin.Graph(melvin.Limits(max_memory="64K"))
    _feed_all(g, wiki_lines[:100], check_every=10)
    assert g.stats()["memory_bytes"] <= 64 << 10
    assert g.stats()["prunes"] > 0


@pytest.mark.parametrize("fraction", [0.9, 0.5, 0.25, 0.1])
def test_explicit_prune(wiki_lines, fraction):
    g = melvin.Graph()
    for line in wiki_lines[:200]:
        g.feed(line)
    before = g.stats()["memory_bytes"]
    target = int(before * fraction)
    shed = g.prune(target)
    g.check()
    after = g.stats()
    assert after["memory_bytes"] < before
    assert shed["memory_bytes"] == before - after["memory_bytes"]
    assert after["memory_bytes"] <= max(target, 64 << 10)
    assert after["prunes"] == 1
    assert isinstance(g.generate(b"The "), bytes)
    g.feed(wiki_lines[300])
    g.check()


def test_prune_keeps_components_of_surviving_patterns():
    """Regression: pruning dropped a hierarchy node ("ay") still used as a component of a
    surviving one ("Day"), leaving Day.right == NONE but Day.left set; check() and load reject."""
    g = melvin.Graph()
    for _ in range(2):
        g.feed(b"ay")
    for _ in range(10):
        g.feed(b"Day")
    g.check()
    for _ in range(6):
        g.prune(g.stats()["memory_bytes"] - 1)
        g.check()
        melvin.persist.loads(melvin.persist.dumps(g)).check()


def test_prune_to_nothing(wiki_lines):
    g = melvin.Graph()
    for line in wiki_lines[:100]:
        g.feed(line)
    g.prune(1)
    g.check()
    s = g.stats()
    assert s["nodes"] >= 257
    g.feed(b"hello world")
    g.check()
