"""One regression test per crash class of the original C system (shared/ORIGINAL.md). Each test
names the class it guards; the fuzzers (fuzz/) cover the same classes with generated inputs.

Work is measured by operation counts (tokens learned, allocation attempts, table sizes), never by
timers."""
import random
import struct
import zlib

import pytest

import melvin
from melvin import persist
from conftest import english_text

LINE_240 = (b"The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat "
            b"by the door. " * 3)[:240]


_text = english_text


def _lines(n: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    text = _text(120 * n, seed)
    out, pos = [], 0
    for _ in range(n):
        k = rnd.randrange(40, 200)
        out.append(text[pos:pos + k])
        pos += k
    return out


# --- 1. long input ---------------------------------------------------------------------------------

def test_long_input_10mb_single_line_small_budget():
    """Class 1: a decode buffer sized by unique nodes overflowed on any line over ~300-500 bytes.
    A 10 MB single line must train inside a 1 MB budget, and the graph must stay usable."""
    lim = melvin.Limits(max_memory="1M")
    g = melvin.Graph(lim)
    line = _text(10 << 20)
    g.feed(line)
    s = g.stats()
    g.check()
    assert s["bytes_fed"] == len(line)
    assert s["memory_bytes"] <= lim.max_memory and s["peak_memory_bytes"] <= lim.max_memory
    assert s["prunes"] > 0
    out = g.generate(line[:50], max_bytes=100)
    assert isinstance(out, bytes) and len(out) <= 100
    assert 0 < g.score(line[:10000]) < 8
    # long prompts are fine too
    assert len(g.generate(line[:1 << 20], max_bytes=16)) <= 16
    assert len(g.predict(line[:1 << 20], k=3)) == 3


# --- 2. unbounded per-node state -------------------------------------------------------------------

def test_unbounded_per_node_state_same_line_20000_times():
    """Class 2: per-node context traces doubled every line (7 MB -> 21.6 GB in 30 lines of 240
    bytes). The same 240-byte line fed 20,000 times: memory flat after the first few hundred."""
    g = melvin.Graph()
    seen = {}
    for i in range(1, 20001):
        g.feed(LINE_240)
        if i in (300, 1000, 5000, 20000):
            s = g.stats()
            seen[i] = (s["memory_bytes"], s["nodes"], s["contexts"], s["edges"])
    g.check()
    assert seen[300] == seen[1000] == seen[5000] == seen[20000], seen
    assert seen[20000][0] < 1 << 20


# --- 3. unchecked allocation results ---------------------------------------------------------------

def _trained(n_lines=30, limits=None):
    g = melvin.Graph(limits)
    for line in _lines(n_lines):
        g.feed(line)
    return g


def test_failed_allocations_raise_and_leave_graph_unchanged():
    """Class 3: NULL results were dereferenced and capacities doubled although realloc failed.
    Training line by line, the next allocation attempt (k=1) or the one after (k=2) is made to
    fail: MemoryError (never a crash), check() passes, and memory_bytes is unchanged whenever the
    failed call grew nothing that it kept (k=1: nothing grew at all; k=2: nothing was learned);
    the same line then trains normally."""
    for limits in (None, melvin.Limits(max_memory="96K")):
        g = melvin.Graph(limits)
        raised = 0
        for i, line in enumerate(_lines(150)):
            k = 1 + i % 2
            before = g.stats()
            g._core._set_fail_at(k)
            try:
                g.feed(line)
            except MemoryError as exc:
                assert not isinstance(exc, melvin.CorruptBrainError)
                raised += 1
                g._core._set_fail_at(-1)
                g.check()
                after = g.stats()
                if k == 1 or after["tokens_fed"] == before["tokens_fed"]:
                    assert after["memory_bytes"] == before["memory_bytes"], (i, k)
                g.feed(line)
            finally:
                g._core._set_fail_at(-1)
            g.check()
        assert raised >= 10, raised
        for _ in range(3):
            g.feed(b"recovery works")
        assert g.generate(b"recovery") == b" works"


def test_graph_after_a_failed_feed_saves_and_loads():
    """Found by fuzz_ops (fuzz/corpus/ops/crash-roundtrip-trie-capacity-full): a failed feed gives
    grown capacity back exactly, leaving the trie array full; such a valid brain must still load."""
    lim = melvin.Limits(max_memory=2 << 20, max_edges=4144, max_nodes=2432, max_payload=16,
                        context_len=3, byte_context=(1, 2, 3), hierarchy_min_count=3, max_levels=8)
    g = melvin.Graph(lim)
    g.feed(b'The "assert" statement')
    g._core._set_fail_at(10)
    try:
        g.feed(b'******************Ass**"<ert statements ar')
    except MemoryError:
        pass
    finally:
        g._core._set_fail_at(-1)
    g.check()
    g.feed(b"still learning")
    g.check()
    g2 = persist.loads(persist.dumps(g))
    assert g2.stats() == g.stats()


def test_failed_allocation_where_cap_exceeded_is_documented():
    """CapExceeded is the documented answer where a step needs more than the caps allow at once:
    a core whose budget cannot hold the base nodes, and a new port (256 byte nodes) beyond
    max_nodes. Nothing changes when it is raised."""
    from melvin._core.core import Core

    kwargs = melvin.Limits().core_kwargs()
    with pytest.raises(melvin.CapExceeded):
        Core(**{**kwargs, "max_memory": 4096})
    g = melvin.Graph(melvin.Limits(max_memory="64K", max_nodes=512))
    g.feed(b"abc")
    before = g.stats()
    with pytest.raises(melvin.CapExceeded):
        g.feed(b"abc", port=1)
    g.check()
    after = g.stats()
    before.pop("peak_memory_bytes"), after.pop("peak_memory_bytes")
    assert after == before
    g.feed(b"abc")
    g.check()


# --- 4. realloc misuse: growth of one of two arrays fails ------------------------------------------

def test_failed_growth_of_one_of_two_arrays():
    """Class 4: two arrays grown one after the other, the second failing after the first moved
    (stale pointer), blocks lost on failed realloc, half-linked edges. Every allocation attempt of
    a feed that grows the tables (nodes + arena, contexts + index, edges + index, trie + index) is
    made to fail in turn; each time the graph is consistent, memory is unchanged when nothing was
    learned, and retraining reaches the same graph as a clean run. Run under ASan (fuzz/ci.sh) a
    stale pointer is a heap-use-after-free report."""
    base = persist.dumps(_trained(20))
    grow = b" ".join(_lines(40, seed=7))
    clean = persist.loads(base)
    start = clean._core._alloc_attempts
    clean.feed(grow)
    n_attempts = clean._core._alloc_attempts - start
    assert n_attempts >= 8, "the feed does not grow the tables"
    raised = unchanged = 0
    for k in range(1, n_attempts + 2):
        g = persist.loads(base)
        before = g.stats()
        g._core._set_fail_at(k)
        try:
            g.feed(grow)
        except MemoryError:
            raised += 1
            g._core._set_fail_at(-1)
            g.check()
            after = g.stats()
            if after["tokens_fed"] == before["tokens_fed"]:
                unchanged += 1
                assert after["memory_bytes"] == before["memory_bytes"], k
                g.feed(grow)
                s, c = g.stats(), clean.stats()
                s.pop("peak_memory_bytes"), c.pop("peak_memory_bytes")
                assert s == c, k
        finally:
            g._core._set_fail_at(-1)
        g.check()
        g.feed(b"still learning")
        assert g.generate(grow[:30], max_bytes=40) is not None
        g.check()
    assert raised >= 3


# --- 5. quadratic work -----------------------------------------------------------------------------

def _work(n_bytes: int) -> dict:
    g = melvin.Graph()
    line = _text(n_bytes, seed=3)
    a0 = g._core._alloc_attempts
    g.feed(line)
    s = g.stats()
    return dict(tokens=s["tokens_fed"] / n_bytes, allocs=(g._core._alloc_attempts - a0) / n_bytes,
                contexts=s["contexts"] / n_bytes, edges=s["edges"] / n_bytes,
                trie=s["trie_states"] / n_bytes)


def test_quadratic_work_per_line_stays_flat():
    """Class 5: per-edge context tags cloned every node seen so far in the line (O(L^2) per line).
    Operations per input byte (tokens learned, allocation attempts, structures created) stay flat
    as one line grows 100x; queries allocate nothing whatever the prompt length."""
    short, long_ = _work(2_000), _work(200_000)
    assert long_["tokens"] <= short["tokens"] * 1.1 + 0.01
    assert long_["allocs"] <= short["allocs"] * 1.5 + 0.001
    for key in ("contexts", "edges", "trie"):
        assert long_[key] <= short[key] * 1.5 + 0.01, (key, short, long_)
    g = _trained(50)
    attempts = g._core._alloc_attempts
    for n in (10, 1000, 100_000):
        prompt = _text(n, seed=5)
        g.generate(prompt, max_bytes=32)
        g.predict(prompt, k=5)
        g.score(prompt)
    assert g._core._alloc_attempts == attempts


# --- 6. unbounded output buffers -------------------------------------------------------------------

def test_unbounded_output_generate_is_bounded_and_returns_only_the_continuation():
    """Class 6: the output buffer was appended on every call and never cleared."""
    g = melvin.Graph()
    for _ in range(5):
        g.feed(b"hello world")
    assert g.generate(b"hello") == b" world"          # the continuation only, not the prompt
    assert g.generate(b"hello") == b" world"          # nothing carried over between calls
    assert g.generate(b"hello", max_bytes=3) == b" wo"
    assert g.generate(b"hello", max_bytes=0) == b""
    loop = melvin.Graph()
    for _ in range(20):
        loop.feed(b"abcabcabcabcabcabcabcabcabcabcabcabcabcabc" * 10)
    for m in (1, 7, 100, 1000):
        assert len(loop.generate(b"abc", max_bytes=m)) <= m
    mem, attempts = loop.stats()["memory_bytes"], loop._core._alloc_attempts
    outs = {loop.generate(b"abc", max_bytes=200) for _ in range(2000)}
    assert len(outs) == 1
    assert loop.stats()["memory_bytes"] == mem and loop._core._alloc_attempts == attempts


# --- 7. debug output -------------------------------------------------------------------------------

def test_logging_noise_feed_and_generate_print_nothing(capfd, tmp_path):
    """Class 7: unconditional stderr logging slowed training 100-300x. Training, pruning, queries,
    save and load write nothing to stdout or stderr (file descriptors 1 and 2)."""
    capfd.readouterr()
    g = melvin.Graph(melvin.Limits(max_memory="128K"))
    for line in _lines(300):
        g.feed(line)
    g.generate(b"The ", max_bytes=64)
    g.predict(b"The ", k=5)
    g.score(b"The end")
    g.prune(64 << 10)
    g.save(tmp_path / "b.mlv")
    melvin.load(tmp_path / "b.mlv").generate(b"The ")
    assert g.stats()["prunes"] > 0
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# --- 8. corrupt or partial brain files -------------------------------------------------------------

@pytest.fixture(scope="module")
def brain() -> bytes:
    g = melvin.Graph(melvin.Limits(max_memory="256K", max_nodes=1024, max_edges=512))
    for line in _lines(40):
        g.feed(line)
    return persist.dumps(g)


def test_corrupt_brain_truncations_raise(brain, tmp_path):
    """Class 8: brains were read without validation. Every truncation raises CorruptBrainError."""
    cuts = list(range(0, 300)) + list(range(300, len(brain), 97)) + [len(brain) - 1]
    for n in cuts:
        with pytest.raises(melvin.CorruptBrainError):
            persist.loads(brain[:n])
    path = tmp_path / "partial.mlv"
    path.write_bytes(b"")
    with pytest.raises(melvin.CorruptBrainError):
        melvin.load(path)
    path.write_bytes(brain[: len(brain) // 2])
    with pytest.raises(melvin.CorruptBrainError):
        melvin.load(path)


def test_corrupt_brain_bit_flips_raise(brain):
    rnd = random.Random(0)
    positions = list(range(0, 300)) + rnd.sample(range(300, len(brain)), 300)
    for pos in positions:
        bad = bytearray(brain)
        bad[pos] ^= 1 << (pos % 8)
        with pytest.raises(melvin.CorruptBrainError):
            persist.loads(bytes(bad))


def _with_meta(brain: bytes, edit) -> bytes:
    """The brain with its meta JSON rewritten by `edit` and every checksum made valid again: a
    hostile file, not a damaged one."""
    import json

    head = struct.Struct("<8sII")
    entry = struct.Struct("<8sQQII")
    _, _, count = head.unpack_from(brain, 0)
    sections, names = {}, []
    for i in range(count):
        name, off, length, _, _ = entry.unpack_from(brain, head.size + i * entry.size)
        names.append(name)
        sections[name] = brain[off:off + length]
    meta = json.loads(sections[names[1]])
    edit(meta)
    sections[names[1]] = json.dumps(meta).encode()
    offset = head.size + count * entry.size + 4
    table, body = [], []
    for name in names:
        data = sections[name]
        table.append(entry.pack(name, offset, len(data), zlib.crc32(data), 0))
        body.append(data)
        offset += len(data)
    t = b"".join(table)
    return b"".join([head.pack(b"MLVNBRN\n", 1, count), t, struct.pack("<I", zlib.crc32(t))] + body)


@pytest.mark.parametrize("edit", [
    lambda m: m["counts"].update(nodes=10 ** 9),
    lambda m: m["counts"].update(edges=m["counts"]["edges"] + 1),
    lambda m: m["capacities"].update(edges=2 ** 40),
    lambda m: m["capacities"].update(edge_index=2 ** 33),
    lambda m: m["capacities"].update(trie=0),
    lambda m: m["counters"].update(bytes_fed=-1),
    lambda m: m.pop("counts"),
], ids=["huge-node-count", "edge-count-off-by-one", "huge-capacity", "huge-index",
        "zero-trie", "negative-counter", "no-counts"])
def test_corrupt_brain_hostile_counts_raise(brain, edit):
    with pytest.raises(melvin.CorruptBrainError):
        persist.loads(_with_meta(brain, edit))
