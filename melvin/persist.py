"""Brain files, format 3, or format 4 for loading in place (formats 1 and 2 still load).

Layout (all little-endian):
    magic "MLVNBRN\\n" | u32 version | u32 section count | section table | u32 crc32 of the table
    section table entry: 8-byte ASCII name | u64 offset | u64 length | u32 crc32 | u32 reserved
    sections: "limits" and "meta" (JSON), "nodes" (14 B each: NODE_RECORD_DTYPE; format 2: 20 B,
              with the right component; format 1: 16 B, without a category), "arena" (payload
              bytes), "contexts" (8 B each), "edges" (12 B each), "cats" (category profiles,
              from format 2)

Format 4 (save(..., mapped=True)) keeps limits, meta, nodes, arena and cats as format 3 and holds
the contexts (20 B: key, list head, total, distinct), the edges (16 B: ctx, dst, next, count,
stamp) and the context and edge index slots ("ctx_ix", "edge_ix", 4 B each) as the core does,
each section aligned to a page; the contexts are numbered in the order of their index slots and
each one's edges are one run, oldest first (Core.mapped_order). load(mmap=True) maps such a
file copy-on-write and uses those sections in place: instead of building the indexes and
successor lists it verifies them, mostly in passes in that order (store.verify_*), so a
brain starts answering sooner, for a file ~2.3x larger than format 3 (about 38 B per edge, beyond
DESIGN's 16 B on disk: format 3 stays the default, and what checkpoints use).

Loading validates the table, every checksum, every record count against its section length, and
then every id and offset (in the core) before the graph is used; any damage raises
CorruptBrainError. Saving writes a temp file, fsyncs it and renames it over the target, so an
interrupted save leaves the previous brain intact. Saves stream in chunks of 2**20 records, so
their transient memory does not grow with the brain.
"""
from __future__ import annotations

import io
import json
import mmap as _mmap
import os
import struct
import tempfile

import numpy as np

try:   # the same CRC-32 as zlib's, ~5x faster: 0.04 s against 0.2 s over a 457 MB brain
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - a dependency; zlib gives identical checksums
    from zlib import crc32

from melvin._core.core import (CAPACITY_NAMES, COUNTER_NAMES, CTX_DTYPE, CTX_RAW_DTYPE, EDGE_DTYPE,
                               EDGE_RAW_DTYPE, NODE_DTYPE, NODE_DTYPE_V1, NODE_RECORD_DTYPE, Core,
                               cat_dtype, node_records)
from melvin.errors import CorruptBrainError
from melvin.limits import Limits

MAGIC = b"MLVNBRN\n"
VERSION = 3                  # 2: node records carry their category; meta.counts.categories
                             # 3: node records without the right component (14 B, was 20)
MAPPED_VERSION = 4           # format 3 with the contexts, edges and their indexes as held in memory
_HEAD = struct.Struct("<8sII")
_ENTRY = struct.Struct("<8sQQII")
_CRC = struct.Struct("<I")
_SECTIONS = ("limits", "meta", "nodes", "arena", "contexts", "edges", "cats")
_SECTIONS_V1 = _SECTIONS[:6]
_SECTIONS_V4 = ("limits", "meta", "nodes", "arena", "cats", "contexts", "edges", "ctx_ix",
                "edge_ix")
_RAW = {"contexts": "contexts", "edges": "edges", "ctx_ix": "context_index",
        "edge_ix": "edge_index"}            # format 4's in-place sections: Core.export_raw kinds
_PAGE = 4096
_JSON_MAX = 1 << 16


_CHUNK = 1 << 20  # records per chunk: a save's transient memory is a few MB at any brain size


def _chunks(core, kind: str, count: int):
    for start in range(0, count, _CHUNK):
        chunk = core.export_range(kind, start, min(count, start + _CHUNK))
        if kind == "nodes":
            chunk = node_records(chunk)
        yield chunk if isinstance(chunk, bytes) else chunk.tobytes()


def write(graph, f, *, mapped: bool = False) -> None:
    """Stream the brain to a seekable binary file: header, a placeholder table, the sections in
    bounded chunks (checksummed on the way), then the real table. mapped: format 4."""
    with graph._lock:                    # the sections must come from one state of the graph
        _write(graph, f, mapped)


def _raw_chunks(core, kind: str, numbering):
    start = 0
    while chunk := core.export_raw(kind, start, start + _CHUNK, numbering):
        yield chunk
        start += _CHUNK


def _write(graph, f, mapped: bool = False) -> None:
    core = graph._core
    counts = core.export_counts()
    counters, capacities = core.export_meta()
    meta = dict(seed=graph.seed, counters=counters, capacities=capacities,
                counts={k: counts[k] for k in ("nodes", "contexts", "edges", "categories")})
    small = {
        "limits": json.dumps(graph.limits.to_dict(), sort_keys=True).encode(),
        "meta": json.dumps(meta, sort_keys=True).encode(),
    }
    base = f.tell()
    names = _SECTIONS_V4 if mapped else _SECTIONS
    numbering = core.mapped_order() if mapped else None
    table_len = len(names) * _ENTRY.size
    f.write(_HEAD.pack(MAGIC, MAPPED_VERSION if mapped else VERSION, len(names)))
    f.write(b"\0" * (table_len + _CRC.size))
    offset = _HEAD.size + table_len + _CRC.size
    table = []
    for name in names:
        if mapped and name in _RAW:
            pad = -offset % _PAGE            # in place: each record where its type aligns
            f.write(b"\0" * pad)
            offset += pad
            parts = _raw_chunks(core, _RAW[name], numbering)
        elif name in small:
            parts = [small[name]]
        elif name == "arena":
            parts = _chunks(core, "arena", counts["arena"])
        elif name == "cats":
            parts = _chunks(core, "categories", counts["categories"])
        else:
            parts = _chunks(core, name, counts[name])
        crc, length = 0, 0
        for part in parts:
            crc = crc32(part, crc)
            length += len(part)
            f.write(part)
        table.append(_ENTRY.pack(name.encode().ljust(8, b"\0"), offset, length, crc, 0))
        offset += length
    end = f.tell()
    table_bytes = b"".join(table)
    f.seek(base + _HEAD.size)
    f.write(table_bytes)
    f.write(_CRC.pack(crc32(table_bytes)))
    f.seek(end)


def dumps(graph, *, mapped: bool = False) -> bytes:
    """The brain as bytes (exactly what save() writes)."""
    buf = io.BytesIO()
    write(graph, buf, mapped=mapped)
    return buf.getvalue()


def atomic_write(path: str, write, *, sync: bool = True) -> None:
    """Create `path` through write(f) on a temp file beside it, then rename it over `path`: a kill
    at any moment leaves either the old file or the new one. With sync, the data and the rename
    are fsynced (a crash of the machine cannot leave a torn file either)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".melvin-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    publish(tmp, path, sync=sync)


def publish(tmp: str, path: str, *, sync: bool = True) -> None:
    """Rename the finished file `tmp` (beside `path`) over `path`, removing tmp if that fails; with
    sync, fsync the directory so the rename survives a crash of the machine."""
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if not sync:
        return
    try:
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def save(graph, path: str, *, mapped: bool = False) -> None:
    atomic_write(path, lambda f: write(graph, f, mapped=mapped))


def _json(buf, name: str) -> dict:
    if len(buf) > _JSON_MAX:
        raise CorruptBrainError(f"{name} section too large ({len(buf)} bytes)")
    try:
        value = json.loads(bytes(buf).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CorruptBrainError(f"{name} section is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CorruptBrainError(f"{name} section is not a JSON object")
    return value


def _int_map(d, names, what) -> dict:
    if not isinstance(d, dict):
        raise CorruptBrainError(f"{what} missing")
    out = {}
    for name in names:
        v = d.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 63:
            raise CorruptBrainError(f"{what}.{name} missing or invalid: {v!r}")
        out[name] = v
    return out


# Sections smaller than this are not worth a system call to release.
_RELEASE_MIN = 1 << 20
# Sections the core checksums while it decodes them (most of a brain's bytes): the file is read
# once, where checking every checksum first read it twice.
_DECODED_CHECKED = ("contexts", "edges")


def loads(buf, *, limits: Limits | None = None, verify: bool = True, _fd: int | None = None):
    """Rebuild a Graph from save()'s bytes (any buffer: bytes, mmap). Checksums, ids, offsets and
    counts are always validated, and repeated patterns, contexts and edges are refused while they
    are indexed; verify=False skips only the final consistency check of what the file supplied
    (payload keys, components, totals: under a tenth of the load time; the trie and successor
    lists the loader rebuilt itself are left to Graph.check()), for bytes known to be what melvin
    wrote, e.g. matched against a recorded sha256 (distributed training does this for its shards).
    Format 4: the contexts, edges and their indexes are used in place when _fd (the file of buf)
    is given, else copied; their lists and indexes are always verified."""
    from melvin.graph import Graph

    view = memoryview(buf)
    spans = {}                             # section name: (offset, length)
    released = {}                          # section name: bytes of it released so far
    mapped = isinstance(buf, _mmap.mmap) and hasattr(_mmap, "MADV_DONTNEED")

    def release(name, done=None):
        """Drop a file mapping's pages of a section once read, all of it or its first `done`
        bytes (they stay in the page cache, so reading them again costs a minor fault): mapped
        pages count in the process's RSS, and loading holds the graph and its indexing scratch
        at the same time."""
        offset, length = spans[name]
        end = offset + length
        if done is not None and done < length:
            end = offset + done
            end -= end % _mmap.PAGESIZE     # the rest of the page is still to be read
        start = released.get(name, offset - offset % _mmap.PAGESIZE)
        if mapped and end > start and end - start >= _RELEASE_MIN:
            released[name] = end
            try:
                buf.madvise(_mmap.MADV_DONTNEED, start, end - start)
            except OSError:   # pragma: no cover - only a saving; the pages stay valid
                pass

    if len(view) < _HEAD.size:
        raise CorruptBrainError("file too short for a melvin brain")
    magic, version, count = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise CorruptBrainError("not a melvin brain (bad magic)")
    if version not in (1, 2, VERSION, MAPPED_VERSION):
        raise CorruptBrainError(f"brain format version {version} is not supported (this melvin "
                                f"reads versions 1 to {MAPPED_VERSION})")
    in_place = version == MAPPED_VERSION  # contexts, edges and indexes as the core holds them
    names = _SECTIONS_V4 if in_place else _SECTIONS if version >= 2 else _SECTIONS_V1
    if count != len(names):
        raise CorruptBrainError(f"unexpected section count {count}")
    table_end = _HEAD.size + count * _ENTRY.size
    if len(view) < table_end + _CRC.size:
        raise CorruptBrainError("file truncated inside the section table")
    table = view[_HEAD.size:table_end]
    (crc,) = _CRC.unpack_from(view, table_end)
    if crc32(table) != crc:
        raise CorruptBrainError("section table checksum mismatch")
    sections = {}
    crcs = {}                              # checksums of the sections checked as decoded
    for i in range(count):
        raw, offset, length, crc, _ = _ENTRY.unpack_from(table, i * _ENTRY.size)
        name = raw.rstrip(b"\0").decode("ascii", "replace")
        if name != names[i]:
            raise CorruptBrainError(f"unexpected section {name!r}")
        if offset < table_end + _CRC.size or offset + length > len(view):
            raise CorruptBrainError(f"section {name} lies outside the file (truncated?)")
        data = view[offset:offset + length]
        spans[name] = (offset, length)
        if name in _DECODED_CHECKED:
            crcs[name] = crc
        elif in_place and name in _RAW:
            pass                           # an index, verified whole by the core instead
        else:
            if crc32(data) != crc:
                raise CorruptBrainError(f"section {name} checksum mismatch")
            release(name)                  # read again when decoded
        sections[name] = data
    try:
        saved_limits = Limits.from_dict(_json(sections["limits"], "limits"))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, CorruptBrainError):
            raise
        raise CorruptBrainError(f"invalid limits: {exc}") from None
    meta = _json(sections["meta"], "meta")
    count_names = ("nodes", "contexts", "edges") + (("categories",) if version >= 2 else ())
    counts = _int_map(meta.get("counts"), count_names, "meta.counts")
    if counts.get("categories", 0) > 0xFFFF:
        raise CorruptBrainError(f"meta.counts.categories invalid: {counts['categories']}")
    counters = _int_map(meta.get("counters"), COUNTER_NAMES, "meta.counters")
    capacities = _int_map(meta.get("capacities"), CAPACITY_NAMES, "meta.capacities")
    if "categories" in meta["capacities"]:   # the categories' table, as training had grown it
        capacities.update(_int_map(meta["capacities"], ("categories",), "meta.capacities"))
    seed = meta.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CorruptBrainError("meta.seed invalid")
    use = limits or saved_limits
    core = Core(**use.core_kwargs(), empty=True)
    indexes = None
    if in_place:
        if _fd is not None:                # the sections as this core's private mapping holds them
            private = core.map_private(_fd, len(view))
            for name in _RAW:
                offset, length = spans[name]
                sections[name] = private[offset:offset + length]
        for name in ("ctx_ix", "edge_ix"):
            if len(sections[name]) % 4:
                raise CorruptBrainError(f"section {name} is not whole index slots")
        indexes = tuple(np.frombuffer(sections[name], dtype="<u4")
                        for name in ("ctx_ix", "edge_ix"))
    arrays = {}
    node_dtype = {1: NODE_DTYPE_V1, 2: NODE_DTYPE}.get(version, NODE_RECORD_DTYPE)
    ctx_dtype, edge_dtype = (CTX_RAW_DTYPE, EDGE_RAW_DTYPE) if in_place else (CTX_DTYPE, EDGE_DTYPE)
    for name, dtype in (("nodes", node_dtype), ("contexts", ctx_dtype), ("edges", edge_dtype)):
        if len(sections[name]) != counts[name] * dtype.itemsize:
            raise CorruptBrainError(f"section {name} holds {len(sections[name])} bytes, "
                                    f"expected {counts[name]} records of {dtype.itemsize}")
        arrays[name] = np.frombuffer(sections[name], dtype=dtype)
    if version < 2:                      # no categories yet: every node without one
        nodes = np.zeros(len(arrays["nodes"]), NODE_DTYPE)
        for field in NODE_DTYPE_V1.names:
            nodes[field] = arrays["nodes"][field]
        arrays["nodes"] = nodes
    profiles = None
    if version >= 2:
        dims = saved_limits.core_kwargs()["embedding_dims"]
        dtype = cat_dtype(dims)
        if len(sections["cats"]) != counts["categories"] * dtype.itemsize:
            raise CorruptBrainError(f"section cats holds {len(sections['cats'])} "
                                    f"bytes, expected {counts['categories']} records of "
                                    f"{dtype.itemsize}")
        profiles = np.frombuffer(sections["cats"], dtype=dtype)
    if use.core_kwargs()["embedding_dims"] != saved_limits.core_kwargs()["embedding_dims"]:
        profiles = None                  # other dims: retaken from the categories' contexts
    core.import_state(arrays["nodes"], bytes(sections["arena"]), arrays["contexts"],
                      arrays["edges"], counters, capacities, verify=verify,
                      categories=counts.get("categories", 0), profiles=profiles,
                      crcs=(crc32, crcs), release=release, indexes=indexes)
    return Graph(use, seed, _core=core)


def load(path, *, mmap: bool = True, verify: bool = True):
    """Load a brain saved by Graph.save(). With mmap (the default) the file is memory-mapped while it
    is validated and copied into the graph's own tables, instead of read into a bytes object first.
    Raises CorruptBrainError on any damage. verify: see loads()."""
    with open(os.fspath(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CorruptBrainError("empty brain file")
        if not mmap:
            return loads(f.read(), verify=verify)
        mm = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
        try:
            return loads(mm, verify=verify, _fd=f.fileno())
        finally:
            try:
                mm.close()
            except BufferError:
                pass  # a traceback still holds views into it; the mapping goes when they do
