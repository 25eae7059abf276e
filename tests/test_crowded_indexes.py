"""Brain files whose items crowd their index into long probe runs. Any 8 bytes are a context key,
so a file can hold keys that all start their probe at one slot (inserting them takes quadratic
time) or that sit each at a home of its own next to the last (one run as long as the index, which
every later miss starting in it walks); edge ids likewise pick edge hashes. Loading refuses
them, in both formats, with a CorruptBrainError that says so."""
import contextlib
import json

import numpy as np
import pytest

import brainfile
import melvin
from melvin._core.core import CTX_DTYPE, EDGE_DTYPE
from melvin._core.store import _miss_cost, _pattern_keys, crowd_limit, partitioned_fills
from melvin.persist import dumps, loads


@pytest.fixture(scope="module")
def brain(wiki_lines):
    return brainfile.sample_brain(wiki_lines)


def _capacity(buf):
    return json.loads(brainfile.split(buf)["meta"])["capacities"]["context_index"]


def _same_home(n, cap):
    """Keys 1..n: fastrange puts every one at slot 0."""
    return np.arange(1, n + 1, dtype=np.uint64)


def _own_homes(n, cap):
    """The smallest key whose home is slot i, for i < n: each at its own home, one run of n."""
    return np.array([(i * 2**64 + cap - 1) // cap for i in range(n)], dtype=np.uint64)


def _crafted(brain, keys):
    buf = dumps(brain)
    cap = _capacity(buf)

    def edit(a):
        a["key"][:] = keys(len(a), cap)
    return brainfile.records(buf, "contexts", CTX_DTYPE, edit)


@pytest.mark.parametrize("keys", [_same_home, _own_homes])
@pytest.mark.parametrize("partitioned", [False, True], ids=["filled", "partitioned"])
def test_crowded_context_keys_are_refused(brain, keys, partitioned):
    buf = _crafted(brain, keys)
    fills = partitioned_fills() if partitioned else contextlib.nullcontext()   # (as big brains)
    with fills, pytest.raises(melvin.CorruptBrainError, match="context index is crowded"):
        loads(buf)


@pytest.mark.parametrize("keys", [_same_home, _own_homes])
def test_a_crowded_brain_is_otherwise_valid(brain, keys, tmp_path):
    """Without the bound the crafted brain loads and is usable (so the refusal is the crowding,
    not damage); saved in format 4, its stored index is refused as crowded too."""
    buf = _crafted(brain, keys)
    with crowd_limit(None):
        g = loads(buf)
        g.check()
        assert g.stats()["contexts"] == brain.stats()["contexts"]
        g.predict(b"The ", k=3)
        path = tmp_path / "crowded.mlv"
        g.save(path, mapped=True)
        melvin.load(path).check()
    for load in (lambda: melvin.load(path), lambda: loads(path.read_bytes())):
        with pytest.raises(melvin.CorruptBrainError, match="context index is crowded"):
            load()


def _fmix64(k):
    k = k.copy()
    k ^= k >> np.uint64(33)
    k *= np.uint64(0xFF51AFD7ED558CCD)
    k ^= k >> np.uint64(33)
    k *= np.uint64(0xC4CEB9FE1A85EC53)
    k ^= k >> np.uint64(33)
    return k


def _home(h, cap):
    """fastrange(h, cap): the high 64 bits of h * cap (cap < 2**32)."""
    hi, lo, cap = h >> np.uint64(32), h & np.uint64(0xFFFFFFFF), np.uint64(cap)
    return (hi * cap + ((lo * cap) >> np.uint64(32))) >> np.uint64(32)


def _crowded_edges(brain):
    """The brain with every indexed edge (of a context with two or more successors) sent to
    another pattern, each context's still distinct, chosen so that its edge index probe starts
    in the first eighth of the index: ids pick edge hashes."""
    buf = dumps(brain)
    cap = json.loads(brainfile.split(buf)["meta"])["capacities"]["edge_index"]
    dsts = np.arange(brain.stats()["nodes"], dtype=np.uint64)

    def edit(a):
        distinct = np.bincount(a["ctx"])
        used = {}
        for e in np.flatnonzero(distinct[a["ctx"]] >= 2):
            c = int(a["ctx"][e])
            homes = _home(_fmix64((np.uint64(c) << np.uint64(32)) | dsts), cap)
            taken = used.setdefault(c, set())
            pick = next(int(d) for d in np.flatnonzero(homes < cap // 8) if int(d) not in taken)
            taken.add(pick)
            a["dst"][e] = pick
    return brainfile.records(buf, "edges", EDGE_DTYPE, edit)


def test_crowded_edge_ids_are_refused(brain):
    """(Format 3: a format 4 save renumbers the contexts, which spreads these hashes again.)"""
    buf = _crowded_edges(brain)
    with crowd_limit(None):
        loads(buf).check()                # valid but for the crowding
    for fills in (contextlib.nullcontext(), partitioned_fills()):
        with fills, pytest.raises(melvin.CorruptBrainError, match="edge index is crowded"):
            loads(buf)


_LETTERS = [c for c in range(256) if c >= 128 or chr(c).isascii() and chr(c).isalpha()]


def _crowding_pairs(index):
    """Two-letter words whose node key (index "node") or trie key ("trie") starts its probe in
    the first eighth of the index whatever its size: fastrange keeps a key's place, so keys
    below 2**61 do. A letter is either a first or a second letter, so no word's first letter is
    ever followed by the end of an episode and each word is among the strongest continuations
    of its first letter, which online BPE needs to fuse it."""
    which = 0 if index == "node" else 1
    words = (bytes([a, b]) for a in _LETTERS[0::2] for b in _LETTERS[1::2])
    return [w for w in words if _pattern_keys(w)[which] >> 61 == 0]


@pytest.fixture(scope="module", params=["node", "trie"])
def crowding_words(request):
    """A brain that learned ~1,000 such words as patterns, and which index they crowd."""
    words = _crowding_pairs(request.param)
    g = melvin.Graph(melvin.Limits(max_memory="64M", embeddings=False, attention=False), seed=5)
    for _ in range(2):
        for word in words:
            g.feed(word)
    assert g.stats()["nodes"] == 257 + len(words) > 1200     # every word became a pattern
    return request.param, g


@pytest.mark.parametrize("mapped", [False, True], ids=["v3", "v4"])
def test_crowding_patterns_are_refused(crowding_words, mapped):
    """Patterns are chosen by their bytes, so text can crowd the node and trie indexes: loading
    such a brain is refused like crafted context keys, though nothing else is wrong with it."""
    index, g = crowding_words
    buf = dumps(g, mapped=mapped)
    with crowd_limit(None):
        loaded = loads(buf)
        loaded.check()
        assert loaded.stats()["nodes"] == g.stats()["nodes"]
    fill_paths = [contextlib.nullcontext()] if mapped else [contextlib.nullcontext(),
                                                           partitioned_fills()]
    for fills in fill_paths:
        with fills, pytest.raises(melvin.CorruptBrainError, match=f"{index} index is crowded"):
            loads(buf)


@pytest.mark.parametrize("mapped", [False, True], ids=["v3", "v4"])
def test_every_index_is_bounded(brain, mapped):
    """With no room at all (bound 0), any index with an item is crowded: each loader reports it
    (which index comes first is the loader's order of checks)."""
    buf = dumps(brain, mapped=mapped)
    loads(buf).check()
    with crowd_limit(0), pytest.raises(melvin.CorruptBrainError,
                                        match=r"(node|context|edge|trie) index is crowded"):
        loads(buf)


def test_legitimate_indexes_are_far_from_crowded(wiki_lines):
    """Hashing keeps runs short: at 3/4 full (the most an index gets) a miss passes ~7.5 slots on
    average, and simulated tables of 64 to 64K slots stayed under 16. A brain with indexes up to
    3/4 full loads at half the allowed mean and no slack."""
    g = melvin.Graph(melvin.Limits(max_memory="64M"), seed=3)
    for line in wiki_lines[:2000]:
        g.feed(line)
    with crowd_limit(16):
        loads(dumps(g)).check()
        loads(dumps(g, mapped=True)).check()


def _reference_miss_cost(occupied):
    """Over every slot of a circular table, the occupied slots a probe starting there passes."""
    cap = len(occupied)
    cost = 0
    for start in range(cap):
        i = start
        while occupied[i % cap]:
            cost += 1
            i += 1
    return cost


def test_the_miss_cost_scan_joins_its_stripes():
    """The scan reads four stripes at once and joins their runs: runs that cross stripes, fill a
    stripe whole, or wrap around the end count as a probe walks them."""
    rng = np.random.default_rng(11)
    tables = [np.zeros(0, np.uint32), np.zeros(5, np.uint32)]
    for cap in list(range(1, 40)) + [63, 64, 65, 101, 128, 257]:
        for density in (0.1, 0.4, 0.6, 0.75):
            occ = rng.random(cap) < density
            tables.append(np.where(occ, 1, 0).astype(np.uint32))
        for first in range(0, cap, max(1, cap // 7)):       # one run, anywhere, wrapping
            length = rng.integers(1, max(2, 3 * cap // 4 + 1))
            occ = np.zeros(cap, bool)
            occ[(first + np.arange(length)) % cap] = True
            tables.append(occ.astype(np.uint32))
    for slots in tables:
        occupied = slots != 0
        got = _miss_cost(slots)
        if 4 * occupied.sum() > 3 * len(slots):
            assert got is None
        else:
            assert got == (occupied.sum(), _reference_miss_cost(occupied)), slots


def test_bench_flood_crafts_what_it_says(monkeypatch):
    """tools/bench_flood.py: the crafted words' patterns start their probes in the first eighth of
    the index aimed at, the plain words' do not, and both texts are the same size."""
    import importlib.util
    import pathlib
    import sys
    # The tool puts the source tree first on sys.path; left there, processes spawned by later
    # tests (dask's workers inherit sys.path) would import melvin from a tree with no extension.
    monkeypatch.setattr(sys, "path", list(sys.path))
    path = pathlib.Path(__file__).parents[1] / "tools" / "bench_flood.py"
    spec = importlib.util.spec_from_file_location("bench_flood", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for index, which in (("trie", 1), ("node", 0)):
        crafted, plain = bench.word_sets(300, 4, index, seed=2)
        assert len(set(crafted)) == len(set(plain)) == 300
        assert all(_pattern_keys(w)[which] >> 61 == 0 for w in crafted)
        assert all(_pattern_keys(w)[which] >> 61 != 0 for w in plain)
        sizes = [sum(map(len, bench.text(words, 3, seed=2))) for words in (crafted, plain)]
        assert sizes[0] == sizes[1] == 300 * 3 * 5 - len(bench.text(crafted, 3, seed=2))
    with pytest.raises(SystemExit, match="too many"):
        bench.word_sets(3000, 3, "trie", seed=2)
