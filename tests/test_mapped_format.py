"""Format 4 (save(mapped=True)): a brain that load() maps and uses in place, its successor lists
and indexes verified instead of rebuilt; any damage still raises CorruptBrainError."""
import struct
import zlib

import numpy as np
import pytest

import brainfile
import melvin
from melvin._core.core import CTX_RAW_DTYPE, EDGE_RAW_DTYPE
from melvin.persist import dumps, loads

NONE = 0xFFFFFFFF
PROBES = [b"", b"The ", b"April", b"hello", b"in the", b"\x00\xff"]


@pytest.fixture(scope="module")
def brain(wiki_lines):
    return brainfile.sample_brain(wiki_lines)


@pytest.fixture(params=[False, True], ids=["one-thread", "threaded"])
def threaded(request, monkeypatch):
    """Big brains verify their edges on a second thread, both threads sharing the edge index
    check in chunks: small ones are sent there too, in chunks of 5 edges."""
    from melvin._core import core
    if request.param:
        monkeypatch.setattr(core, "PARALLEL_LOAD_EDGES", 0)
        monkeypatch.setattr(core, "SHARE_CHUNK", 5)
    return request.param


_HEAD, _ENTRY, _sections = brainfile.HEAD, brainfile.ENTRY, brainfile.split


def _join(sections: dict) -> bytes:
    """A format 4 brain of these sections with correct checksums, each at an offset a multiple of
    8 (where its records align, not a page: loads() copies them)."""
    return brainfile.join(sections, version=4, align=8)


def _edit(buf: bytes, name: str, dtype, edit) -> bytes:
    return brainfile.records(buf, name, dtype, edit, version=4, align=8)


def _model(g):
    st = {k: v for k, v in g.stats().items()
          if k not in ("memory_bytes", "peak_memory_bytes", "bytes_per_edge")}
    return st, [(g.predict(p, k=8), g.generate(p), g.score(p) if p else None) for p in PROBES]


def test_round_trip_in_place_and_copied(brain, tmp_path, threaded):
    path = tmp_path / "b.mlv"
    brain.save(path, mapped=True)
    assert path.read_bytes()[8:12] == struct.pack("<I", 4)
    mapped = melvin.load(path)
    assert mapped._core._mapped_tables() == ["context_index", "contexts", "edge_index", "edges"]
    copied = melvin.load(path, mmap=False)
    assert copied._core._mapped_tables() == []
    for g in (mapped, copied, loads(path.read_bytes())):
        assert g.check()
        assert _model(g) == _model(brain)
        # the contexts and edges are sized to their count (memory_bytes does not round-trip)
        assert g.stats()["memory_bytes"] <= brain.stats()["memory_bytes"]
    # and back to the compact format (with the edges renumbered: see the next test)
    assert _model(loads(dumps(mapped))) == _model(brain)


def test_the_layout_is_canonical(brain, wiki_lines):
    """Each context's edges are one run, oldest first, in context order, whatever order training
    left them in: a mapped brain saves to the same records again, also after learning more."""
    buf = dumps(brain, mapped=True)
    g = loads(buf)
    assert {k: v for k, v in _sections(dumps(g, mapped=True)).items() if k != "meta"} == \
        {k: v for k, v in _sections(buf).items() if k != "meta"}
    edges = np.frombuffer(_sections(buf)["edges"], EDGE_RAW_DTYPE)
    assert np.all(np.diff(edges["ctx"].astype(np.int64)) >= 0)
    for more in (g, brain_copy := loads(dumps(brain))):
        for line in wiki_lines[80:120]:
            more.feed(line)
    assert _model(g) == _model(brain_copy)
    again = loads(dumps(g, mapped=True))
    assert again.check() and _model(again) == _model(g)


def test_a_mapped_brain_keeps_learning(brain, wiki_lines, tmp_path, threaded):
    """Training writes to the mapping's private copies; growing a table moves it to the heap
    (its mapped pages given back). The file never changes."""
    path = tmp_path / "b.mlv"
    brain.save(path, mapped=True)
    before = path.read_bytes()
    g = melvin.load(path)
    ref = loads(dumps(brain))
    for line in wiki_lines[80:200]:
        g.feed(line)
        ref.feed(line)
    assert g.check()
    assert _model(g) == _model(ref)
    assert "edges" not in g._core._mapped_tables()
    g.prune(g.stats()["memory_bytes"] // 2)
    ref.prune(ref.stats()["memory_bytes"] // 2)
    assert g.check() and _model(g) == _model(ref)
    assert path.read_bytes() == before
    del g                                   # unmaps; the file is still a valid brain
    assert _model(melvin.load(path)) == _model(loads(dumps(brain)))


def _multi_edge(buf):
    """(index in the edges of) an edge whose context has two or more successors, and its
    context's first edge."""
    s = _sections(buf)
    ctxs = np.frombuffer(s["contexts"], CTX_RAW_DTYPE)
    edges = np.frombuffer(s["edges"], EDGE_RAW_DTYPE)
    c = int(np.flatnonzero(ctxs["distinct"] >= 3)[0])
    first = int(ctxs["head"][c]) - int(ctxs["distinct"][c]) + 1
    assert edges["ctx"][first] == c
    return c, first


def _same_key(i, j):
    def edit(a):
        a["key_lo"][j] = a["key_lo"][i]
        a["key_hi"][j] = a["key_hi"][i]
    return edit


def _set(field, i, value):
    def edit(a):
        a[field][i] = value
    return edit


def test_hostile_records(brain, threaded):
    buf = dumps(brain, mapped=True)
    nn, nc, ne = (brain.stats()[k] for k in ("nodes", "contexts", "edges"))
    c, first = _multi_edge(buf)
    ctxs = np.frombuffer(_sections(buf)["contexts"], CTX_RAW_DTYPE)
    sole = int(np.flatnonzero(ctxs["distinct"] == 1)[0])
    E, C = EDGE_RAW_DTYPE, CTX_RAW_DTYPE
    edits = [
        ("edges", E, _set("dst", first, nn)),
        ("edges", E, _set("dst", first, NONE)),
        ("edges", E, _set("ctx", first, nc)),
        ("edges", E, _set("ctx", first, c + 1)),
        ("edges", E, _set("count", first, 0)),
        ("edges", E, _set("count", first + 1, 7)),          # no longer sums to the total
        ("edges", E, _set("next", first + 1, NONE)),        # list cut short
        ("edges", E, _set("next", first + 1, first + 1)),   # a loop
        ("edges", E, _set("next", first + 2, first)),       # skips an edge
        ("edges", E, _set("next", first, first + 1)),       # ascends
        ("edges", E, _set("next", first, ne + 3)),
        ("edges", E, lambda a: a.__setitem__(first + 1, a[first])),   # a repeated edge
        ("edges", E, _set("dst", first + 1, 5000)),         # not where the index has it
        ("contexts", C, _set("head", c, NONE)),
        ("contexts", C, _set("head", c, ne)),
        ("contexts", C, _set("head", c, first)),
        ("contexts", C, _set("distinct", c, 0)),
        ("contexts", C, _set("distinct", c, 1 << 31)),
        ("contexts", C, _set("total", c, 0)),
        ("contexts", C, _set("total", sole, (1 << 32) - 1)),
        # (any 8 bytes are a key, but this one is no longer where the index has it)
        ("contexts", C, _set("key_hi", c, int(ctxs["key_hi"][c]) ^ (1 << 31))),
        ("contexts", C, _same_key(4, 5)),
    ]
    for name, dtype, edit in edits:
        bad = _edit(buf, name, dtype, edit)
        for verify in (True, False):
            with pytest.raises(melvin.CorruptBrainError):
                loads(bad, verify=verify)
    assert loads(_join(_sections(buf))).check()


def _index_edits(slots):
    occupied = np.flatnonzero(slots)
    empty = np.flatnonzero(slots == 0)
    i, j = int(occupied[0]), int(occupied[1])

    def swap(a):
        a[i], a[j] = a[j], a[i]
    return [
        _set_slot(i, 0),                            # an entry missing
        _set_slot(int(empty[0]), int(slots[i])),    # an entry twice
        _set_slot(int(empty[0]), 1 << 20),          # an entry naming nothing
        _set_slot(i, int(slots[i]) ^ (1 << 31)),    # a wrong tag
        _set_slot(i, int(slots[i]) & 0xFFFF0000),   # tag bits only
        _set_slot(i, int(slots[i]) + 1),            # another item
        lambda a: a.__setitem__(slice(None), np.where(a == 0, a[i], a)),  # full: probes never end
    ], swap


def _set_slot(i, value):
    def edit(a):
        a[i] = value
    return edit


@pytest.mark.parametrize("name", ["ctx_ix", "edge_ix"])
def test_every_changed_index_slot_is_refused(brain, name, threaded):
    """The index sections are verified instead of checksummed: each slot is empty or names the
    one item a lookup for it finds there, and every item has one. So any change of one slot is
    refused, and what passes is a correct index of the records, whatever its bytes (two entries
    of one run swapped may still be)."""
    buf = dumps(brain, mapped=True)
    slots = np.frombuffer(_sections(buf)[name], np.uint32)
    edits, swap = _index_edits(slots)
    for edit in edits:
        with pytest.raises(melvin.CorruptBrainError):
            loads(_edit(buf, name, np.uint32, edit))
    try:
        g = loads(_edit(buf, name, np.uint32, swap))
    except melvin.CorruptBrainError:
        pass
    else:
        assert g.check() and _model(g) == _model(brain)
    s = _sections(buf)
    for cut in (s[name][:-4], s[name][:-1], b""):
        with pytest.raises(melvin.CorruptBrainError):
            loads(_join({**s, name: cut}))


def test_random_damage(brain, tmp_path):
    """Flipped bits anywhere, in place or copied: refused, or (in padding) harmless."""
    buf = dumps(brain, mapped=True)
    rng = np.random.default_rng(5)
    path = tmp_path / "d.mlv"
    for trial in range(40):
        bad = bytearray(buf)
        for at in rng.integers(0, len(buf), size=1 + trial % 3):
            bad[at] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(bad))
        for load in (lambda: loads(bytes(bad)), lambda: melvin.load(path)):
            try:
                g = load()
            except melvin.CorruptBrainError:
                continue
            assert g.check() and _model(g) == _model(brain)


def test_sections_off_their_alignment_are_copied(brain, tmp_path):
    """A section that does not sit where its records align (not what save() writes) is copied
    instead of used in place."""
    buf = _join(_sections(dumps(brain, mapped=True)))
    path = tmp_path / "odd.mlv"
    # shift every section by 4 bytes: offsets stay valid, alignment to 8 is lost
    _, _, count = _HEAD.unpack_from(buf, 0)
    table_end = _HEAD.size + count * _ENTRY.size
    body = bytes(buf[table_end + 4:])
    entries = []
    for i in range(count):
        raw, off, length, crc, res = _ENTRY.unpack_from(buf, _HEAD.size + i * _ENTRY.size)
        entries.append(_ENTRY.pack(raw, off + 4, length, crc, res))
    tb = b"".join(entries)
    path.write_bytes(bytes(buf[:_HEAD.size]) + tb + struct.pack("<I", zlib.crc32(tb)) + b"\0" * 4
                     + body)
    g = melvin.load(path)
    assert g._core._mapped_tables() == []
    assert g.check() and _model(g) == _model(brain)


def test_a_mapped_brain_must_fit_its_own_limits(brain):
    buf = dumps(brain, mapped=True)
    lim = brain.limits.to_dict()
    with pytest.raises(melvin.CorruptBrainError, match="does not fit its own limits"):
        loads(buf, limits=melvin.Limits(**{**lim,
                                           "max_memory": brain.stats()["memory_bytes"] // 4}))


def test_empty_and_fresh_brains(tmp_path):
    for g in (melvin.Graph(), melvin.Graph(melvin.Limits(embeddings=False))):
        path = tmp_path / "e.mlv"
        g.save(path, mapped=True)
        h = melvin.load(path)
        assert h.check() and _model(h) == _model(g)
        h.feed(b"hello hello hello")
        assert h.check()


def _ix_mask(cap):
    m = cap + 256
    return 0xFFFFFFFF if m >= 0xFFFFFFFF else 0xFFFFFFFF >> (32 - m.bit_length())


def _wrapped(buf, key_first, key_last=None):
    """The brain with context 0's key (its entry in slot 0) set to key_first and, unless None,
    the last context's to key_last, its entry moved to the table's last slot."""
    s = _sections(buf)
    ctxs = np.frombuffer(s["contexts"], CTX_RAW_DTYPE).copy()
    slots = np.frombuffer(s["ctx_ix"], np.uint32).copy()
    cap, nc, mask = len(slots), len(ctxs), _ix_mask(len(slots))
    assert slots[0] and not slots[-1] and not slots[-2]     # what this layout needs
    for k, key in ((0, key_first), (nc - 1, key_last)):
        if key is not None:
            ctxs["key_lo"][k], ctxs["key_hi"][k] = key & 0xFFFFFFFF, key >> 32
    if key_last is not None:
        slots[np.flatnonzero(slots)[-1]] = 0
        slots[cap - 1] = (key_last & 0xFFFFFFFF & ~mask) | nc
    slots[0] = (key_first & 0xFFFFFFFF & ~mask) | 1
    s["contexts"], s["ctx_ix"] = ctxs.tobytes(), slots.tobytes()
    return _join(s)


def test_context_index_runs_that_wrap_around(wiki_lines, threaded):
    """Contexts are numbered in their index slots' order, and an entry whose probe started near
    the end of the table sits at its start: its path runs over the end."""
    g = melvin.Graph(melvin.Limits(max_memory="32M", context_len=4), seed=7)
    for line in wiki_lines[:20]:
        g.feed(line)
    buf = dumps(g, mapped=True)
    near_end_a, near_end_b = (1 << 64) - (1 << 20) + 1, (1 << 64) - (2 << 20) + 2
    cap = len(_sections(buf)["ctx_ix"]) // 4
    assert (near_end_a * cap) >> 64 == (near_end_b * cap) >> 64 == cap - 1   # both start there
    h = loads(_wrapped(buf, near_end_a, near_end_b))
    assert h.check()
    for bad in (_wrapped(buf, near_end_a),                # the last slot, on its way, is empty
                _wrapped(buf, near_end_a, near_end_a)):   # the same key before it
        with pytest.raises(melvin.CorruptBrainError, match="context index"):
            loads(bad)
