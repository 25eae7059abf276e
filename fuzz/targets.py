"""Pure fuzz targets for melvin (Pillow's layout: these functions, thin atheris entry points in
fuzz_*.py, and tests/test_fuzz_corpus.py replaying every saved input through the same functions).

Each target is deterministic: the graph's limits and every choice come from the input bytes, with
small caps (max_memory 64K..2M, max_edges 64..4144, max_nodes 512..2432, max_payload 2..16,
context_len 1..4) so that pruning and the count caps run, not only the happy path.

A target returns normally for every input the contract allows; anything else (an unexpected
exception, a failed invariant, a sanitizer report) is a finding.
    fuzz_feed    arbitrary bytes split into episodes, check() after every feed; the same episodes
                 through training's batched path learn the same graph
    fuzz_ops     API operation sequences: feed, generate, predict, score, after, before, prune,
                 save/load, merge, bad arguments, injected allocation failures; check() after
                 every step
    fuzz_load    melvin.persist.loads of arbitrary bytes (as given, and with the checksums repaired
                 so the structural validation is reached): only CorruptBrainError
    fuzz_inputs  the training-input readers of melvin.inputs on temporary files and stdin: only
                 InputError/MelvinError, and episodes equal a reference split
"""
from __future__ import annotations

import bz2
import contextlib
import functools
import gzip
import io
import lzma
import math
import os
import struct
import sys
import tempfile
import zlib

import melvin
from melvin import persist
from melvin.errors import CapExceeded, CorruptBrainError, MelvinError

# Known, reported findings to step past while fuzzing on (comma-separated names; empty by default,
# so the corpus replay and CI stay strict): "trie-capacity" = a valid brain whose trie array is
# exactly full failed to load ("trie capacity too small for the payloads"; fixed in 11fd5da, kept
# as the example of the mechanism).
SUPPRESS = frozenset(filter(None, os.environ.get("MELVIN_FUZZ_SUPPRESS", "").split(",")))


def use_sorted_ranges_everywhere() -> None:
    """Scoring answers exclusion sums over contexts with >= 256 successors from sorted ranges,
    which small fuzzed graphs never reach: the fuzzing processes lower the threshold to 2, so the
    range code runs on every graph (its results equal the walk's: tests/test_probability.py)."""
    from melvin._core import model
    model._set_excl_min(2)


def partitioned_fills_by_input(target):
    """Big indexes (2**18 items and more) are filled by partition, which small fuzzed graphs never
    reach: for half the inputs (chosen by their CRC, so a replay makes the same choice) every
    index is, in 8-slot partitions, half of those counting first (the fallback for skewed
    hashes). The setting is restored afterwards (the corpus replay runs inside pytest)."""
    @functools.wraps(target)
    def run(data: bytes) -> None:
        from melvin._core import store
        h = zlib.crc32(data)
        if h & 1:
            with store.partitioned_fills(count=bool(h & 2)):
                target(data)
        else:
            target(data)
    return run


def loader_paths_by_input(target):
    """Loading decodes the edges on a second thread from 2**20 edges on, and checksums and
    decodes contexts and edges in runs of 2**16 records, which small fuzzed brains never reach:
    by two more bits of the input's CRC, the edges go to the second thread and the runs are 7
    records long (so damage falls in any run, and a run ends inside any section); format 4's
    edge index check is then shared in chunks of 3 edges. The settings are restored afterwards."""
    @functools.wraps(target)
    def run(data: bytes) -> None:
        from melvin._core import core
        h = zlib.crc32(data)
        old = core.PARALLEL_LOAD_EDGES, core.LOAD_CHUNK, core.SHARE_CHUNK
        if h & 4:
            core.PARALLEL_LOAD_EDGES = 0
        if h & 8:
            core.LOAD_CHUNK = 7
            core.SHARE_CHUNK = 3
        try:
            target(data)
        finally:
            core.PARALLEL_LOAD_EDGES, core.LOAD_CHUNK, core.SHARE_CHUNK = old
    return run


KB = 1 << 10
MIN_MEMORY = 64 * KB
MAX_MEMORY = 2 << 20
BYTE_CONTEXTS = ((), (1,), (2,), (3, 6), (1, 2, 3), (4,), (2, 5, 9))
HEADER = 6                      # bytes of the input that choose the limits
MAX_EPISODES = 48               # fuzz_feed: episodes taken from one input
MAX_FEEDS = 96                  # fuzz_feed: feed calls (each followed by check()) per input
EPS = 1e-9


class Bytes:
    """Deterministic consumer of fuzz input; reads past the end give zeros / empty bytes."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return self.u8() | self.u8() << 8

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def chunk(self) -> bytes:
        """A length-prefixed piece (length 0..255, or up to 4095 when the top bit says so)."""
        n = self.u8()
        if n & 0x80:
            n = (n & 0x7F) << 5 | self.u8() >> 3
        return self.take(n)

    def rest(self) -> bytes:
        return self.take(self.remaining())


def limits_from(r: Bytes) -> melvin.Limits:
    """Small limits from the first HEADER bytes of the input."""
    b = [r.u8() for _ in range(HEADER)]
    span = MAX_MEMORY - MIN_MEMORY
    return melvin.Limits(
        max_memory=MIN_MEMORY + ((b[0] << 8 | b[1]) * span) // 0xFFFF,
        max_edges=64 + b[2] * 16,
        max_nodes=512 + (b[3] & 0x0F) * 128,
        max_payload=2 + (b[3] >> 4) % 15,
        context_len=1 + (b[4] & 3),
        byte_context=BYTE_CONTEXTS[(b[4] >> 2) % len(BYTE_CONTEXTS)],
        hierarchy_min_count=2 + (b[4] >> 5) % 3,
        max_levels=1 + (b[5] & 7),
        # a quarter of the inputs learn bytewise (every token one byte: its own smoothing, and the
        # one-byte token context interleaved with the byte contexts)
        hierarchy=(b[5] & 0xC0) != 0xC0,
        max_heads=(b[5] >> 3) & 7,                  # 0: attention off
        word_tokens=(b[1] & 1) == 0,
    )


def new_graph(lim: melvin.Limits):
    """A graph, or None when the budget cannot even hold the base nodes (documented CapExceeded)."""
    try:
        return melvin.Graph(lim)
    except CapExceeded:
        return None


def check(g, lim: melvin.Limits) -> dict:
    """check() plus the caps, seen from the outside."""
    g.check()
    s = g.stats()
    assert s["memory_bytes"] <= lim.max_memory, (s["memory_bytes"], lim.max_memory)
    assert s["peak_memory_bytes"] <= lim.max_memory, (s["peak_memory_bytes"], lim.max_memory)
    assert s["edges"] <= lim.max_edges, (s["edges"], lim.max_edges)
    assert s["nodes"] <= lim.max_nodes, (s["nodes"], lim.max_nodes)
    return s


class State:
    """A graph under test and the ports it has learned (feeding a new port may legitimately hit
    max_nodes/max_memory: 256 byte nodes are needed at once)."""

    def __init__(self, g, lim):
        self.g = g
        self.lim = lim
        self.ports = {0}


def feed(st: State, data: bytes, port: int = 0) -> bool:
    """Feed one episode. On a known port feeding prunes instead of failing; on a new port it may
    raise CapExceeded, and then nothing changed. Returns whether the episode was learned."""
    g = st.g
    before = g.stats() if port not in st.ports else None
    try:
        g.feed(data, port=port)
    except CapExceeded:
        if before is None:
            raise
        after = check(g, st.lim)
        before.pop("peak_memory_bytes")
        after.pop("peak_memory_bytes")
        assert after == before, ("a failed feed on a new port changed the graph", before, after)
        return False
    st.ports.add(port)
    return True


def _query_checks(g, prompt: bytes, max_bytes: int, k: int, port: int = 0, min_conf: float = 0.0):
    """Queries: well-formed answers, and no allocation at all (memory cannot grow)."""
    core = g._core
    attempts, mem = core._alloc_attempts, g.stats()["memory_bytes"]
    out, conf = g.generate(prompt, port=port, max_bytes=max_bytes, min_confidence=min_conf,
                           return_confidence=True)
    assert isinstance(out, bytes) and len(out) <= max_bytes, (len(out), max_bytes)
    assert all(math.isfinite(c) and -EPS <= c <= 1 + EPS for c in conf), conf
    assert g.generate(prompt, port=port, max_bytes=max_bytes, min_confidence=min_conf) == out
    pred = g.predict(prompt, k=k, port=port)
    assert len(pred) <= k
    probs = [p for _, p in pred]
    assert all(isinstance(t, bytes) for t, _ in pred)
    assert all(math.isfinite(p) and -EPS <= p <= 1 + EPS for p in probs), pred
    assert probs == sorted(probs, reverse=True), pred
    assert sum(probs) <= 1 + 1e-6, sum(probs)
    if prompt:
        bpb = g.score(prompt, port=port)
        assert math.isfinite(bpb) and bpb >= 0, bpb
    for ranked in (g.after(prompt, k=k, port=port), g.before(prompt, k=k, port=port)):
        weights = [w for _, w in ranked]
        assert len(ranked) <= k and all(isinstance(t, bytes) for t, _ in ranked), ranked
        assert all(math.isfinite(w) and -EPS <= w <= 1 + EPS for w in weights), ranked
        assert weights == sorted(weights, reverse=True), ranked
        assert sum(weights) <= 1 + 1e-6, sum(weights)
    assert core._alloc_attempts == attempts, "a query allocated"
    assert g.stats()["memory_bytes"] == mem, "a query changed memory_bytes"


# --- 1. feed ---------------------------------------------------------------------------------------

@partitioned_fills_by_input
def fuzz_feed(data: bytes) -> None:
    """Arbitrary bytes as episodes. Header: limits, then a control byte (repeats, ports) and the
    separator byte that splits the rest into episodes."""
    r = Bytes(data)
    lim = limits_from(r)
    ctl, sep = r.u8(), r.u8()
    g = new_graph(lim)
    if g is None:
        return
    st = State(g, lim)
    check(g, lim)
    episodes = r.rest().split(bytes([sep]))[:MAX_EPISODES]
    # Repeats let hierarchy form and counts grow; the total is bounded because check() after
    # every feed dominates the cost of an execution.
    schedule = (episodes * (1 + (ctl & 3)))[:MAX_FEEDS]
    for ep in schedule:
        port = 0
        if ctl & 4 and ep:
            port, ep = ep[0] & 3, ep[1:]
        feed(st, ep, port)
        check(g, lim)
    if not ctl & 4:
        # Training's batched path (one core call for many episodes, each next episode's first
        # steps prefetched during the last one's final step) learns exactly what feed did.
        batched = new_graph(lim)
        for start in range(0, len(schedule), 1 + (ctl >> 3)):
            batched._feed_batch(schedule[start:start + 1 + (ctl >> 3)])
        check(batched, lim)
        assert persist.dumps(batched) == persist.dumps(g), "feed_many learned otherwise than feed"
    for ep in episodes[:4]:
        _query_checks(g, ep[: len(ep) // 2], max_bytes=64 + (ctl >> 3), k=1 + (ctl >> 5))


# --- 2. API operation sequences -------------------------------------------------------------------

def _merge_available() -> bool:
    try:
        melvin.merge([])
    except NotImplementedError:
        return False
    except (ValueError, TypeError):
        return True
    return True


_MERGE = None


def _bad_arguments(g, which: int):
    """One deliberately wrong call; it must raise ValueError/TypeError and change nothing."""
    calls = (
        (TypeError, lambda: g.feed(12345)),
        (TypeError, lambda: g.feed(["a"])),
        (ValueError, lambda: g.feed(b"x", port=256)),
        (ValueError, lambda: g.feed(b"x", port=-1)),
        (ValueError, lambda: g.feed(b"x", port=True)),
        (ValueError, lambda: g.generate(b"x", max_bytes=-1)),
        (ValueError, lambda: g.generate(b"x", min_confidence=1.5)),
        (TypeError, lambda: g.generate(3.5)),
        (ValueError, lambda: g.predict(b"x", k=-1)),
        (ValueError, lambda: g.predict(b"x", k=1.5)),
        (ValueError, lambda: g.score(b"")),
        (ValueError, lambda: g.prune(0)),
        (ValueError, lambda: g.prune(-5)),
        (ValueError, lambda: g.prune("lots")),
        (ValueError, lambda: g.prune(1.5)),
        (ValueError, lambda: melvin.Limits(max_memory="1K")),
        (ValueError, lambda: melvin.Limits(max_nodes=3)),
        (ValueError, lambda: melvin.Limits(context_len=0)),
        (ValueError, lambda: melvin.Limits(byte_context=(3, 1))),
        (TypeError, lambda: melvin.Graph(limits="64K")),
        (TypeError, lambda: melvin.Graph(seed="x")),
    )
    expected, call = calls[which % len(calls)]
    before = g.stats()
    try:
        call()
    except expected:
        pass
    else:
        raise AssertionError(f"bad-argument call #{which % len(calls)} did not raise "
                             f"{expected.__name__}")
    assert g.stats() == before, "a rejected call changed the graph"


@partitioned_fills_by_input
def fuzz_ops(data: bytes) -> None:
    """A sequence of API operations decoded from the input; check() after every one."""
    global _MERGE
    r = Bytes(data)
    lim = limits_from(r)
    g = new_graph(lim)
    if g is None:
        return
    st = State(g, lim)
    check(g, lim)
    last = b""
    for _ in range(64):
        if not r.remaining():
            break
        op = r.u8()
        kind = op % 12
        g = st.g
        if kind in (0, 1):                                          # feed
            last = r.chunk()
            feed(st, last, port=(op >> 4) & 3 if kind == 1 else 0)
        elif kind == 2:                                             # feed one chunk n times
            last = r.chunk()
            for _ in range(2 + (op >> 4)):
                feed(st, last)
        elif kind == 3:                                             # generate / predict / score
            prompt = r.chunk() if op & 0x10 else last[: r.u8() % (len(last) + 1)]
            _query_checks(g, prompt, max_bytes=r.u8(), k=r.u8() % 12, min_conf=(op >> 5) / 8.0,
                          port=(op >> 5) & 3 if op & 0x80 else 0)
        elif kind == 4:                                             # generate loops stay bounded
            mem = g.stats()["memory_bytes"]
            for _ in range(4):
                out = g.generate(last[:8], max_bytes=1 + (op >> 4))
                assert len(out) <= 1 + (op >> 4)
            assert g.stats()["memory_bytes"] == mem
        elif kind == 5:                                             # prune to a share of memory
            before = g.stats()
            share = (op >> 4) / 16.0
            target = max(1, int(before["memory_bytes"] * share))
            g.prune(target)
            after = check(g, lim)
            assert after["memory_bytes"] <= before["memory_bytes"]
            assert after["edges"] <= before["edges"]
        elif kind == 6:                                             # save / load round trip
            before = g.stats()
            buf = persist.dumps(g)
            try:
                g2 = persist.loads(buf)
            except CorruptBrainError as exc:
                if "trie-capacity" in SUPPRESS and "trie capacity too small" in str(exc):
                    continue
                raise
            assert g2.stats() == before, (before, g2.stats())
            assert persist.dumps(g2) == buf
            assert g2.generate(last[:6], max_bytes=32) == g.generate(last[:6], max_bytes=32)
            st.g = g2
        elif kind == 7:                                             # a damaged copy must not load
            buf = bytearray(persist.dumps(g))
            pos = (r.u16() * len(buf)) >> 16
            if op & 0x10:
                buf = buf[:pos]
            else:
                buf[pos] ^= 1 << ((op >> 5) & 7)
            try:
                persist.loads(bytes(buf))
            except CorruptBrainError:
                pass
            else:
                raise AssertionError(f"a damaged brain loaded (pos {pos}, op {op})")
        elif kind == 8:                                             # bad arguments
            _bad_arguments(g, r.u8())
        elif kind == 9:                                             # injected allocation failure
            before = g.stats()
            g._core._set_fail_at(1 + r.u8() % 16)
            try:
                g.feed(r.chunk())
            except MemoryError:
                after = check(g, lim)
                if after["tokens_fed"] == before["tokens_fed"]:
                    assert after["memory_bytes"] == before["memory_bytes"], \
                        ("a failed feed that learned nothing changed memory_bytes",
                         before["memory_bytes"], after["memory_bytes"])
            finally:
                g._core._set_fail_at(-1)
            feed(st, b"still learning")
        elif kind == 10:                                            # merge (if implemented)
            if _MERGE is None:
                _MERGE = _merge_available()
            if not _MERGE:
                continue
            other = new_graph(lim)
            if other is None:
                continue
            other_st = State(other, lim)
            feed(other_st, r.chunk())
            feed(other_st, last)
            try:
                merged = melvin.merge([g, other])
            except CapExceeded:
                continue
            check(merged, merged.limits)
            _query_checks(merged, last[:4], max_bytes=32, k=3)
            st.g = merged
            st.ports |= other_st.ports
            lim = st.lim = merged.limits
        else:                                                       # stats are consistent
            s = g.stats()
            assert s["nodes"] >= 257 and s["hierarchy_nodes"] == sum(s["hierarchy_levels"].values())
            assert s["bytes_per_edge"] is None or s["bytes_per_edge"] > 0
        check(st.g, lim)


# --- 3. loading arbitrary bytes --------------------------------------------------------------------

_HEAD = struct.Struct("<8sII")
_ENTRY = struct.Struct("<8sQQII")


def repair_checksums(buf: bytes) -> bytes:
    """The same bytes with every in-range section checksum and the table checksum recomputed, so
    mutations reach the validation behind the checksums. Returns buf unchanged if it has no
    readable section table."""
    if len(buf) < _HEAD.size:
        return buf
    _, _, count = _HEAD.unpack_from(buf, 0)
    if count > 64:
        return buf
    table_end = _HEAD.size + count * _ENTRY.size
    if len(buf) < table_end + 4:
        return buf
    out = bytearray(buf)
    for i in range(count):
        at = _HEAD.size + i * _ENTRY.size
        name, offset, length, _, reserved = _ENTRY.unpack_from(out, at)
        if offset + length <= len(out):
            crc = zlib.crc32(out[offset:offset + length])
            _ENTRY.pack_into(out, at, name, offset, length, crc, reserved)
    struct.pack_into("<I", out, table_end, zlib.crc32(out[_HEAD.size:table_end]))
    return bytes(out)


def _load_from_file(buf: bytes):
    """melvin.load() of buf written to a file: mapped, so a format 4 brain is used in place."""
    path = os.path.join(_tmpdir(), "brain.mlv")
    with open(path, "wb") as f:
        f.write(buf)
    return persist.load(path)


def _load_one(buf: bytes) -> None:
    from melvin._core.store import crowd_limit
    h = zlib.crc32(buf)
    # For an eighth of the inputs (three more bits), loading allows almost no probe runs (a slack
    # of 0-4095 slots, no mean), so every index's refusal as crowded is reached, at any point of
    # its fill or check; the other inputs go on to the paths behind a successful load.
    tight = crowd_limit(0, (h >> 8) & 0xFFF) if h & 0xE0 == 0xE0 else contextlib.nullcontext()
    try:    # bytes are copied; a file is mapped (by a bit of the input's CRC)
        with tight:
            g = _load_from_file(buf) if h & 16 else persist.loads(buf)
    except CorruptBrainError:
        return
    lim = g.limits
    s = check(g, lim)
    # "never allocate more than the file justifies"
    assert s["memory_bytes"] <= 256 * len(buf) + (1 << 20), (s["memory_bytes"], len(buf))
    st = State(g, lim)
    for _ in range(3):
        feed(st, b"a loaded brain still learns")
    check(g, lim)
    out = g.generate(b"a loaded", max_bytes=64)
    assert isinstance(out, bytes) and len(out) <= 64
    _query_checks(g, b"a loaded brain", max_bytes=32, k=4)
    # The round trip checks what a save keeps, not the crowding bound: a file crafted to sit just
    # under it can cross it by learning (new keys lengthen its runs); real brains stay far below.
    try:
        with crowd_limit(None):
            again = persist.loads(persist.dumps(g))
    except CorruptBrainError as exc:
        if "trie-capacity" in SUPPRESS and "trie capacity too small" in str(exc):
            return
        raise
    assert again.stats() == g.stats()
    with crowd_limit(None):
        again = persist.loads(persist.dumps(g, mapped=True))
    assert {k: v for k, v in again.stats().items() if "memory" not in k and k != "bytes_per_edge"} \
        == {k: v for k, v in g.stats().items() if "memory" not in k and k != "bytes_per_edge"}


@partitioned_fills_by_input
@loader_paths_by_input
def fuzz_load(data: bytes) -> None:
    """loads() of arbitrary bytes may only raise CorruptBrainError; a brain that loads passes
    check(), keeps learning and generating."""
    _load_one(data)
    fixed = repair_checksums(data)
    if fixed != data:
        _load_one(fixed)


# --- 4. training-input readers ---------------------------------------------------------------------

_KINDS = (".txt", ".gz", ".bz2", ".xz", ".zst", ".xml", ".xml.gz", "-")
_TMP = None


def _tmpdir() -> str:
    global _TMP
    if _TMP is None or not os.path.isdir(_TMP):
        _TMP = tempfile.mkdtemp(prefix="melvin-fuzz-inputs-")
    return _TMP


def _compress(kind: str, data: bytes) -> bytes:
    if kind in (".gz", ".xml.gz"):
        return gzip.compress(data, mtime=0)
    if kind == ".bz2":
        return bz2.compress(data)
    if kind == ".xz":
        return lzma.compress(data)
    if kind == ".zst":
        import zstandard
        return zstandard.ZstdCompressor().compress(data)
    return data


def _split_nl(text: bytes) -> list[bytes]:
    """Lines with their "\\n" (only "\\n" ends a line: "\\r" is kept as text)."""
    parts = text.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def reference_lines(text: bytes, cap: int) -> list[bytes]:
    """What split="lines" must yield: each line (with its newline) cut into pieces of `cap`
    bytes, the newline dropped from the last piece, empty pieces skipped; a blank line is one
    empty episode (the newline after a line cut exactly at the cap is not a blank line)."""
    out = []
    for line in _split_nl(text):
        if line == b"\n":
            out.append(b"")
            continue
        for i in range(0, len(line), cap):
            piece = line[i:i + cap]
            if piece.endswith(b"\n"):
                piece = piece[:-1]
            if piece:
                out.append(piece)
    return out


_BLANK = b" \t\r\n\x0b\x0c"


def reference_paragraphs(text: bytes) -> list[bytes]:
    """What split="paragraphs" must yield when no paragraph reaches max_episode: maximal runs of
    non-blank lines, joined with their inner newlines, without the final one."""
    out, parts = [], []
    for line in _split_nl(text) + [b""]:
        if not line.strip(_BLANK):
            joined = b"".join(parts)
            if joined.endswith(b"\n"):
                joined = joined[:-1]
            if joined:
                out.append(joined)
            parts = []
        else:
            parts.append(line)
    return out


def reference_documents(text: bytes, cap: int) -> list[bytes]:
    return [text[i:i + cap] for i in range(0, len(text), cap)]


class _Stdin:
    """Stands in for sys.stdin: only .buffer is used by the readers."""

    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)


def _read_all(inputs, source, split, cap, start=None):
    episodes, positions = [], []
    reader = inputs.Reader(source, split, max_episode=cap, start=start)
    with reader:
        for ep in reader:
            assert isinstance(ep, bytes) and len(ep) <= cap, (len(ep), cap)
            assert ep or split == "lines", "only a blank line is an empty episode"
            episodes.append(ep)
            positions.append(reader.position)
    return episodes, positions


def fuzz_inputs(data: bytes) -> None:
    """melvin.inputs readers on a temporary file (or stdin) made from the input: only
    InputError/MelvinError may escape; valid plain or compressed text gives exactly the reference
    episodes, resuming from a saved position gives the rest, and batched reading gives the same
    episodes with its lists cut at a limit."""
    try:
        from melvin import inputs
    except ImportError:
        return                                      # the module is not there (yet): nothing to test
    r = Bytes(data)
    kind = _KINDS[r.u8() % len(_KINDS)]
    mode = r.u8()
    split = inputs.SPLITS[mode % 3]
    cap_byte = r.u8()
    cap = 1 + cap_byte if mode & 0x80 else inputs.DEFAULT_MAX_EPISODE
    text = r.rest()
    raw_mode = (mode >> 2) & 3                      # 0, 1: compress the text; 2: raw; 3: truncated
    if kind == ".xml":
        raw_mode = 2 if raw_mode < 2 else raw_mode    # nothing to compress: the XML as it is
    try:
        body = text if raw_mode == 2 else _compress(kind if kind != "-" else ".txt", text)
    except ImportError:
        return                                      # zstandard missing: .zst inputs cannot be made
    if raw_mode == 3:
        body = body[: len(body) * 3 // 4]
    if kind == "-":
        real = sys.stdin
        sys.stdin = _Stdin(body)
        try:
            source = inputs.collect_sources(["-"])[0]
            _check_reader(inputs, source, split, cap, text, body, raw_mode, stdin=True)
        finally:
            sys.stdin = real
        return
    path = os.path.join(_tmpdir(), "input" + kind)
    with open(path, "wb") as f:
        f.write(body)
    sources = inputs.collect_sources([path])
    assert len(sources) == 1 and sources[0].path == path
    _check_reader(inputs, sources[0], split, cap, text, body, raw_mode)


def _check_reader(inputs, source, split, cap, text, body, raw_mode, stdin=False):
    try:
        episodes, positions = _read_all(inputs, source, split, cap)
    except MelvinError:
        return
    # The text the reader must reproduce exactly, where the input is valid.
    if source.wiki:
        return
    if stdin or source.compression is None:
        if any(body.startswith(magic) for magic, _ in inputs._MAGIC):
            return                                  # plain bytes that look compressed on stdin
        expected = body
    elif raw_mode < 2:
        expected = text
    else:
        return
    if split == "lines":
        want = reference_lines(expected, cap)
    elif split == "documents":
        want = reference_documents(expected, cap)
    elif cap > len(expected):
        want = reference_paragraphs(expected)
    else:
        want = None
    if want is not None:
        assert episodes == want, (split, cap, episodes[:3], want[:3])
    if stdin or not episodes:
        return
    # resume from a position in the middle: the rest must follow exactly
    k = len(episodes) // 2
    rest, _ = _read_all(inputs, source, split, cap, start=positions[k])
    assert rest == episodes[k + 1:], ("resume", k, rest[:2], episodes[k + 1:k + 3])
    # training's batched reading: the same episodes, a list ending at the first one reaching the
    # limit, with the position after it the one recorded there
    limit = positions[k]["consumed"]
    first = next(j for j, pos in enumerate(positions) if pos["consumed"] >= limit)
    got, ends = [], []
    with inputs.Reader(source, split, max_episode=cap) as reader:
        for batch in reader.batches(lambda: limit):
            got += batch
            ends.append((len(got), reader.position))
    assert got == episodes, ("batches", got[:3], episodes[:3])
    assert all(pos == positions[n - 1] for n, pos in ends), "a batch's end position"
    assert first + 1 in [n for n, _ in ends], ("no batch ends at the limit", first, limit)
