"""Distributed training on dask.distributed: shards trained in parallel, merged by a tree of pairs.

    from melvin.distributed import train_distributed
    summary = train_distributed(["big.txt"], "big.mlv", limits=melvin.Limits(max_memory="1G"),
                                workers=2)                          # a LocalCluster of 2 processes
    summary = train_distributed(["/shared/corpus/"], "/shared/big.mlv", limits=lim,
                                scheduler="tcp://host:8786", checkpoint_dir="/shared/shards")

Plan. The inputs (files and directories as melvin.inputs collects them; not stdin) are cut into
shards at episode boundaries: a plain file under --split lines at newlines, under --split paragraphs
after blank lines; compressed files, Wikipedia dumps and --split documents are never cut (one piece
per file). Pieces are packed in input order into shards of about ``shard_bytes`` (default: one
shard per worker, at most 512 MiB each; every extra shard adds a merge, and merges cost time and
held-out bits per byte), so a directory of small files gives a few shards, not one task per file.
Each shard is read with melvin.inputs.Reader from its start offset up to its end, so its episodes
are exactly those the single-process trainer feeds for that range (the concatenation over the
shards is the single-process episode stream).

Vocabulary sample. With several shards, the first ``vocab_bytes`` of the first input (default
1/32 of the input, at most 16 MiB) are trained first: by the client while the worker processes
of a LocalCluster it starts come up (planned before they exist), else by one task. Shard 0
continues that graph over the rest of its range; every other shard starts from its patterns only
(``vocabulary()``: the hierarchy, no counts, contexts or edges), so all shards segment text alike
and their counts line up when merged (on 16 MB in 2 shards: +1.9% held-out bits per byte over
single-process instead of +3.0%). Nothing is counted twice, and one shard is exactly the
single-process brain. The sample is serial work while one core waits, so it is kept small: on 88 MB
with 2 workers, 1/32 instead of 1/16 saves ~0.5 s of ~18 for +0.14% bits per byte.

Tasks. One task per shard trains a ``Graph(limits, seed)`` (from the sample, as above) on its
episodes, in order. With
``ship="file"`` (the default; needs a filesystem shared by the client and the workers) it writes the
brain into the work directory and returns its path; with ``ship="bytes"`` it returns the brain as
bytes (melvin.persist.dumps) and nothing but the inputs need be visible to the workers. Brains are
then merged pairwise in a fixed tree (shard 0 with 1, 2 with 3, ..., then the results in the same
way) by tasks that merge the two loaded brains under ``limits`` (melvin.merge's semantics, built
inside the larger brain instead of a copy: melvin.merge.merge_consuming); the last one is written
atomically to ``out``. With ``ship="file"`` the first level's pairs of shards to train are merged
by the left shard's own task (train_shard_and_absorb): once trained, it waits for the right
shard's task (through a dask Variable holding its future, its thread seceded from the worker's
pool) and merges that brain into its graph while it is still in memory, which saves writing and
loading it (88 MB, 2 workers: the merge stage 1.8 -> 1.2 s); the brain is the same. Inputs are
read by the workers at the client's absolute paths (a shared mount, or the same copy on every
machine); each task checks the input's size and fingerprint against the plan and refuses a
different file.

Determinism. Training and merge are deterministic and the tree's shape depends only on the plan, so
the same inputs, limits, seed and shard plan give a byte-identical brain, whatever the number of
workers, the order in which tasks finish, or the ship mode. (The plan depends on the number of
workers only when neither ``shards`` nor ``shard_bytes`` is given.) The merged brain is not the
single-process brain: each shard learns its own hierarchy and counts, which merge adds up.

Checkpoints and failures. With ``checkpoint_dir`` every finished shard is kept there as
``shard-NNNNN-<id>.mlv`` plus a JSON manifest (the inputs' paths, sizes and fingerprints, the byte
ranges, split, limits, seed, and the brain's sha256); a later run with ``resume=True`` (the default)
reuses every shard whose manifest matches instead of training it again, so a failed or interrupted
run loses no finished shard. Task errors are retried ``retries`` times; a worker that dies is
replaced (LocalCluster's nanny) and its task rescheduled by the scheduler, up to
``distributed.scheduler.allowed-failures`` deaths per task (set to at least ``retries`` for a
LocalCluster started here; a remote scheduler uses its own configuration).

Memory. Each worker holds one graph while training (up to ``limits.max_memory``) and two brains
plus melvin.merge's working set while merging, which peaks at about MERGE_FACTOR times one input
graph's memory (merge_consuming frees each absorbed input at once). A left shard's task holds its
graph while it waits for the right one; if that runs on the same worker, the worker holds two
graphs meanwhile, still below MERGE_FACTOR. run_from_args sizes the graph budget from a per-worker
process budget accordingly; the summary reports the workers' peak RSS (``worker_peak_rss``).

CLI. ``add_arguments(parser)`` adds --workers, --scheduler, --ship, --shards, --shard-bytes,
--shard-dir, --keep-shards, --vocab-bytes and --retries to melvin.train's parser; ``run_from_args(args)`` runs a
parsed command line (see their docstrings).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import uuid

from melvin.errors import MelvinError
from melvin.inputs import (DEFAULT_MAX_EPISODE, SPLITS, InputError, Reader, Source,
                           collect_sources, fingerprint)
from melvin.limits import Limits, parse_size
from melvin.persist import atomic_write, publish

log = logging.getLogger("melvin.distributed")

SHIPS = ("file", "bytes")
SHARDS_PER_WORKER = 1
VOCAB_FRACTION = 32
VOCAB_MAX = 16 << 20
MAX_DEFAULT_SHARD = 512 << 20
MIN_DEFAULT_SHARD = 64 << 10
MANIFEST_FORMAT = "melvin-shard"
MANIFEST_VERSION = 1
FIXED_OVERHEAD = 64 << 20
MERGE_FACTOR = 4           # a pairwise merge's peak RSS, in units of one input graph's memory_bytes
                           # (measured: two 240 MiB graphs merge in 428 MiB peak RSS, two of
                           # ~700 MiB in 2.5x the larger; absorbing reserves room for both once)
_BLANK = b" \t\r\n\x0b\x0c"
_SCAN = 1 << 20


class DistributedError(MelvinError):
    """Distributed training cannot start or a shard could not be trained or merged."""


# --- the shard plan -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Piece:
    """A byte range [start, end) of one input (end None: to its end). ``limit`` stops reading once
    that many bytes of the input are consumed (used for whole inputs under limit_bytes)."""

    path: str
    compression: str | None
    wiki: bool
    size: int
    fingerprint: str
    start: int = 0
    end: int | None = None
    limit: int | None = None

    @property
    def nbytes(self) -> int:
        """Input bytes this piece covers (raw bytes for compressed inputs: a weight, not exact)."""
        end = self.size if self.end is None else self.end
        if self.limit is not None:
            end = min(end, self.limit)
        return max(0, end - self.start)


@dataclasses.dataclass(frozen=True)
class Shard:
    """One task's input: pieces fed in order to a graph that starts from `base`: "empty" (a fresh
    graph), "sample" (the vocabulary sample's trained graph, which these pieces continue) or
    "vocab" (the sample's patterns with no counts, edges or contexts)."""

    index: int
    pieces: tuple
    split: str
    max_episode: int
    base: str = "empty"
    sample: tuple = ()          # the sample's pieces when base is "sample" or "vocab"

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pieces)

    def identity(self, limits: Limits, seed: int) -> dict:
        """What a checkpointed shard brain must match to be reused (JSON-normalised)."""
        ident = {"pieces": [dataclasses.asdict(p) for p in self.pieces], "split": self.split,
                 "max_episode": self.max_episode, "limits": limits.to_dict(), "seed": seed,
                 "base": self.base, "sample": [dataclasses.asdict(p) for p in self.sample]}
        return json.loads(json.dumps(ident, sort_keys=True))

    def ident_hash(self, limits: Limits, seed: int) -> str:
        blob = json.dumps(self.identity(limits, seed), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def filename(self, limits: Limits, seed: int) -> str:
        return f"shard-{self.index:05d}-{self.ident_hash(limits, seed)[:12]}.mlv"


@dataclasses.dataclass(frozen=True)
class Plan:
    """The shards, and the vocabulary sample (index -1) trained before them, or None."""

    shards: tuple
    sample: Shard | None = None

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shards) + (self.sample.nbytes if self.sample else 0)

    def __len__(self):
        return len(self.shards)

    def __iter__(self):
        return iter(self.shards)


def _next_boundary(f, pos: int, size: int, split: str, max_episode: int) -> int | None:
    """The first episode boundary at or after pos in a plain file, or None if there is none before
    its end. lines: just after a newline. paragraphs: at a line start just after a blank line (one
    holding only whitespace, at most max_episode bytes with its newline, as melvin.inputs decides)."""
    if pos <= 0:
        return 0
    if pos >= size:
        return None
    f.seek(pos - 1)
    at = pos - 1
    # to the start of the next line
    while True:
        buf = f.read(_SCAN)
        if not buf:
            return None
        nl = buf.find(b"\n")
        if nl >= 0:
            at += nl + 1
            break
        at += len(buf)
    if split == "lines":
        return at if at < size else None
    # paragraphs: scan whole lines from `at` for a blank one
    f.seek(at)
    while at < size:
        line = f.readline(max_episode + 1)
        if not line:
            return None
        if not line.endswith(b"\n"):
            # a long line (or the last, unterminated one): skip to its end
            at += len(line)
            while not line.endswith(b"\n"):
                line = f.readline(_SCAN)
                if not line:
                    return None
                at += len(line)
            continue
        at += len(line)
        if len(line) <= max_episode and not line.strip(_BLANK):
            return at if at < size else None
    return None


def plan_shards(inputs, *, split: str = "lines", workers: int = 1, shards: int | None = None,
                shard_bytes: int | None = None, max_episode: int = DEFAULT_MAX_EPISODE,
                limit_bytes: int | None = None, vocab_bytes: int | None = None,
                exclude=()) -> Plan:
    """Cut the inputs into shards at episode boundaries (see the module docstring).

    vocab_bytes: the size of the vocabulary sample at the start of the first input (None: 1/32 of
    the input, at most 16 MiB; 0: none). It is planned only when there is more than one shard and
    the first input is a plain file under lines or paragraphs; the shards then cover the rest."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards < 1):
        raise ValueError(f"shards must be a positive int, got {shards!r}")
    if vocab_bytes is not None and (isinstance(vocab_bytes, bool) or not isinstance(vocab_bytes, int)
                                    or vocab_bytes < 0):
        raise ValueError(f"vocab_bytes must be a non-negative int, got {vocab_bytes!r}")
    sources = collect_sources(inputs, exclude=exclude)
    if not sources:
        raise DistributedError("no input files")
    pieces_in: list[tuple[Source, dict]] = []
    for src in sources:
        if src.is_stdin or not src.seekable:
            raise DistributedError(f"{src.name}: distributed training needs regular files (not "
                                   f"stdin or pipes): the workers read the inputs themselves")
        pieces_in.append((src, fingerprint(src.path)))
    # what is cuttable: plain files under lines/paragraphs
    cuttable = [src.compression is None and not src.wiki and split != "documents"
                for src, _ in pieces_in]
    if limit_bytes is not None and any(src.compression or src.wiki for src, _ in pieces_in):
        raise DistributedError("limit_bytes in distributed training needs plain (uncompressed, "
                               "non-XML) inputs: their byte sizes decide the plan")
    total = sum(fp["size"] for _, fp in pieces_in)
    if limit_bytes is not None:
        total = min(total, limit_bytes)
    if shard_bytes is not None:
        target = parse_size(shard_bytes, "shard_bytes")
        n = max(1, math.ceil(total / target))
    else:
        n = shards if shards is not None else max(1, int(workers)) * SHARDS_PER_WORKER
        target = None

    # the vocabulary sample: a prefix of the first input
    sample_end = 0
    first_src, first_fp = pieces_in[0]
    if n > 1 and vocab_bytes != 0 and cuttable[0]:
        want = vocab_bytes if vocab_bytes is not None else min(total // VOCAB_FRACTION, VOCAB_MAX)
        first_end = first_fp["size"] if limit_bytes is None else min(first_fp["size"], limit_bytes)
        if 0 < want < first_end:
            with open(first_src.path, "rb") as f:
                cut = _next_boundary(f, want, first_fp["size"], split, max_episode)
            if cut is not None and cut <= first_end // 2:
                sample_end = cut
            else:
                log.info("no vocabulary sample: %d bytes do not fit in the first half of %s",
                         want, first_src.name)
    # Shard 0 continues the sample's graph, which starts larger and so trains slower per byte
    # (88 MB in 2 shards: 0.2-1.0 s of 15 behind the other); it is planned as if it already held
    # half the sample, so that it does not finish last.
    head_start = sample_end // 2
    if target is None:
        target = max(1, math.ceil((total - sample_end + head_start) / n))
        if shards is None:
            target = min(max(target, MIN_DEFAULT_SHARD), MAX_DEFAULT_SHARD)

    out: list[list[Piece]] = []
    cur: list[Piece] = []
    cur_bytes = head_start
    left = limit_bytes            # input bytes still to plan under limit_bytes

    def close():
        nonlocal cur, cur_bytes
        if cur:
            out.append(cur)
        cur, cur_bytes = [], 0

    def piece_base(src, fp):
        return dict(path=os.path.abspath(src.path), compression=src.compression, wiki=src.wiki,
                    size=fp["size"], fingerprint=fp["fingerprint"])

    for k, ((src, fp), can_cut) in enumerate(zip(pieces_in, cuttable)):
        if left is not None and left <= 0:
            break
        size = fp["size"]
        base = piece_base(src, fp)
        if not can_cut:
            limit = None
            if left is not None and left < size:
                limit = left
            piece = Piece(**base, limit=limit)
            cur.append(piece)
            cur_bytes += piece.nbytes
            if left is not None:
                left -= piece.nbytes
            if cur_bytes >= target:
                close()
            continue
        end_of_input = size
        with open(src.path, "rb") as f:
            if left is not None and left < size:
                cut = _next_boundary(f, left, size, split, max_episode)
                end_of_input = size if cut is None else cut
            pos = sample_end if k == 0 else 0
            while pos < end_of_input:
                room = target - cur_bytes
                if room < max(1, target // 20) and cur:
                    close()
                    room = target
                if end_of_input - pos <= room + room // 10:
                    end = end_of_input
                else:
                    cut = _next_boundary(f, pos + room, size, split, max_episode)
                    end = end_of_input if cut is None or cut >= end_of_input else cut
                cur.append(Piece(**base, start=pos, end=None if end == size else end))
                cur_bytes += end - pos
                pos = end
                if cur_bytes >= target and pos < end_of_input:
                    close()
        if left is not None:
            left -= end_of_input
        if cur_bytes >= target:
            close()
    close()
    if not out:
        # nothing but empty inputs: one shard that trains an empty brain, as the trainer would
        out.append([Piece(**piece_base(first_src, first_fp))])
    sample = None
    if sample_end:
        sample_pieces = (Piece(**piece_base(first_src, first_fp), start=0, end=sample_end),)
        sample = Shard(-1, sample_pieces, split, max_episode)
        return Plan(tuple(Shard(i, tuple(p), split, max_episode, "sample" if i == 0 else "vocab",
                                sample_pieces) for i, p in enumerate(out)), sample)
    return Plan(tuple(Shard(i, tuple(p), split, max_episode) for i, p in enumerate(out)))


def piece_batches(piece: Piece, split: str, max_episode: int = DEFAULT_MAX_EPISODE):
    """piece_episodes' episodes as lists (melvin.inputs.Reader.batches), for training."""
    src = Source(piece.path, piece.compression, piece.wiki, piece.size)
    start = None
    if piece.start:
        start = {"item": 0, "offset": piece.start, "line_start": True, "consumed": piece.start}
    reader = Reader(src, split, max_episode=max_episode, start=start)
    end, limit = piece.end, piece.limit
    # A list ends at the first episode past `end` (no episode crosses it: that one belongs to the
    # next range) or reaching `limit` (the last one taken).
    stop_at = min(end + 1 if end is not None else 1 << 62, limit if limit is not None else 1 << 62)
    with reader:
        for batch in reader.batches(lambda: stop_at):
            if end is not None and reader.consumed > end:
                if len(batch) > 1:
                    yield batch[:-1]
                break
            yield batch
            if limit is not None and reader.consumed >= limit:
                break


def piece_episodes(piece: Piece, split: str, max_episode: int = DEFAULT_MAX_EPISODE):
    """The episodes of one piece, exactly as melvin.inputs.Reader yields them for that range."""
    for batch in piece_batches(piece, split, max_episode):
        yield from batch


def shard_episodes(shard: Shard, with_sample: bool = False):
    """The shard's episodes (with_sample: preceded by the sample's when its base is "sample", i.e.
    everything its brain has learned)."""
    if with_sample and shard.base == "sample":
        for piece in shard.sample:
            yield from piece_episodes(piece, shard.split, shard.max_episode)
    for piece in shard.pieces:
        yield from piece_episodes(piece, shard.split, shard.max_episode)


def vocabulary(graph, limits: Limits | None = None):
    """A graph holding `graph`'s patterns (its hierarchy) and nothing learned about them: no
    contexts, no edges, zero counts and counters. Training shards from the same vocabulary keeps
    their segmentations consistent, which their merge needs (see the module docstring)."""
    import numpy as np

    from melvin._core.core import CTX_DTYPE, EDGE_DTYPE, Core
    from melvin.graph import Graph

    limits = limits or graph.limits
    with graph._lock:
        st = graph._core.export_state()
    nodes = st["nodes"].copy()
    nodes["count"] = 0
    nodes["category"] = 0                 # categories are learned (their contexts), not vocabulary
    core = Core(**limits.core_kwargs(), empty=True)
    core.import_state(nodes, bytes(st["arena"]), np.zeros(0, CTX_DTYPE), np.zeros(0, EDGE_DTYPE),
                      {k: 0 for k in st["counters"]})
    return Graph(limits, graph.seed, _core=core)


# --- tasks (run on the workers) -------------------------------------------------------------------

def _sha256(data) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _atomic_write(path: str, data, sync: bool = True) -> None:
    atomic_write(path, lambda f: f.write(data), sync=sync)


def _atomic_copy(src: str, dst: str) -> None:
    """Publish src (a finished brain nobody rewrites: saves replace files, never edit them) at dst
    atomically and durably: a hard link renamed over dst where the filesystem allows, so a
    multi-GB brain is not read and written again; else a copy."""
    directory = os.path.dirname(os.path.abspath(dst))
    tmp = os.path.join(directory, f".melvin-{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(src, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(src, tmp)
    except OSError:
        def copy(f):
            with open(src, "rb") as s:
                shutil.copyfileobj(s, f, 1 << 22)
        atomic_write(dst, copy)
        return
    publish(tmp, dst)


def _peak_rss() -> int:
    from melvin.train import peak_rss         # this worker process's, so far
    return peak_rss()


def _graph_stats(g) -> dict:
    s = g.stats()
    levels = s.get("hierarchy_levels") or []
    return {"nodes": s["nodes"], "contexts": s["contexts"], "edges": s["edges"],
            "memory_bytes": s["memory_bytes"], "hierarchy_nodes": s.get("hierarchy_nodes"),
            "hierarchy_levels": max(levels) if levels else 0, "prunes": s.get("prunes", 0),
            "bytes_fed": s.get("bytes_fed"), "episodes": s.get("episodes")}


def _manifest_path(brain_path: str) -> str:
    """A shard brain's manifest: beside it, .json for .mlv."""
    return brain_path[:-len(".mlv")] + ".json"


def _write_manifest(path: str, manifest: dict) -> None:
    # not fsynced, like the brain it describes: a torn manifest is unreadable and a torn brain
    # fails the manifest's sha256, so a resume retrains the shard instead of trusting either
    _atomic_write(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(),
                  sync=False)


def _manifest_for(shard: Shard, limits: Limits, seed: int, meta: dict) -> dict:
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
            "identity": shard.identity(limits, seed), "brain": meta["brain"],
            "sha256": meta["sha256"], "episodes": meta["episodes"], "bytes": meta["bytes"],
            "failed_episodes": meta["failed_episodes"], "stats": meta["stats"]}


def _maybe_fault(fault, shard: Shard, consumed: int) -> None:
    """Test hook: kill this worker process once, half way through the chosen shard."""
    if not fault or fault.get("shard") != shard.index or consumed < shard.nbytes // 2:
        return
    try:
        fd = os.open(fault["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"killed pid {os.getpid()} in shard {shard.index}\n".encode())
    os.close(fd)
    os._exit(17)


def train_shard(shard: Shard, limits: Limits, seed: int = 0, ship: str = "bytes",
                workdir: str | None = None, checkpoint: bool = False, fault=None,
                sample: dict | None = None) -> dict:
    """Train one shard (a task). Returns {"meta": ..., "path": ...} (ship="file", the brain written
    into workdir, with its manifest if checkpoint) or {"meta": ..., "data": brain bytes}. `sample`
    is the vocabulary sample's result, needed when the shard's base is "sample" or "vocab"."""
    g, meta = _train(shard, limits, seed, fault, sample)
    return _keep_shard(shard, limits, seed, meta, g, ship, workdir, checkpoint)


def train_shard_and_absorb(shard: Shard, limits: Limits, seed: int, workdir: str, checkpoint: bool,
                           fault, sample: dict | None, right: str, merge_limits: Limits,
                           name: str) -> dict:
    """Train `shard` (as train_shard with ship="file"), then wait for the task whose future is in
    the dask Variable `right` (the shard task of its neighbour in the merge tree) and merge that
    brain into this one while it is still in memory (a task): merge_pair's result, without
    writing this shard's brain unless it is checkpointed and without loading it again. Returns
    merge_pair's result with this shard's meta under "shard"."""
    from melvin.merge import merge_consuming

    g, meta = _train(shard, limits, seed, fault, sample)
    if checkpoint:
        _keep_shard(shard, limits, seed, meta, g, "file", workdir, True)
    other = _wait_for(right)
    t0 = time.perf_counter()
    m = merge_consuming([g, _load(other)], merge_limits)
    del g
    result = _merged(m, name, [shard.index, other["meta"]["index"]], "file", workdir, t0)
    result["shard"] = meta
    return result


def _wait_for(name: str) -> dict:
    """The result of the task whose future the client put in the dask Variable `name`, from
    inside a task: the thread leaves the worker's pool while it waits, so the worker can run that
    task meanwhile."""
    from distributed import Variable, rejoin, secede

    secede()
    try:
        return Variable(name).get().result()
    finally:
        rejoin()


def _train(shard: Shard, limits: Limits, seed: int, fault, sample: dict | None):
    """(graph, meta) of one shard trained on this worker."""
    from melvin.graph import Graph

    for p in shard.pieces:
        fp = fingerprint(p.path)
        if fp["size"] != p.size or fp["fingerprint"] != p.fingerprint:
            raise InputError(f"{p.path} on this worker differs from the client's (size "
                             f"{fp['size']} vs {p.size}, or content); the workers must see the same "
                             f"inputs")
    t0 = time.perf_counter()
    if shard.base == "empty":
        g = Graph(limits, seed)
    else:
        if sample is None:
            raise DistributedError(f"shard {shard.index} starts from the vocabulary sample, which "
                                   f"was not given")
        g = _load(sample)
        if shard.base == "vocab":
            g = vocabulary(g, limits)
    episodes = failed = 0
    nbytes = 0
    for piece in shard.pieces:
        for batch in piece_batches(piece, shard.split, shard.max_episode):
            for _, exc in g._feed_batch(batch):
                failed += 1
                log.warning("shard %d: an episode was not learned: %s", shard.index, exc)
            episodes += len(batch)
            nbytes += sum(map(len, batch)) + len(batch)
            if fault:
                _maybe_fault(fault, shard, nbytes)
    meta = {"kind": "shard", "index": shard.index, "episodes": episodes, "failed_episodes": failed,
            "bytes": shard.nbytes, "seconds": round(time.perf_counter() - t0, 3),
            "sha256": None, "stats": _graph_stats(g), "resumed": False,
            "brain": shard.filename(limits, seed), "size": None, "peak_rss": _peak_rss()}
    return g, meta


def _keep_shard(shard: Shard, limits: Limits, seed: int, meta: dict, g, ship: str,
                workdir: str | None, checkpoint: bool) -> dict:
    """A trained shard's result: its brain's bytes, or the brain written into workdir (with its
    manifest if checkpoint)."""
    result = _emit(g, ship, workdir and os.path.join(workdir, meta["brain"]))
    meta.update(sha256=result.pop("sha256"), size=result.pop("size"), peak_rss=_peak_rss())
    if checkpoint and ship == "file":
        _write_manifest(_manifest_path(result["path"]), _manifest_for(shard, limits, seed, meta))
    result["meta"] = meta
    return result


def _emit(g, ship: str, path: str | None) -> dict:
    """A task's brain: {"data": its bytes} (ship="bytes"), or {"path": path} where it was
    written, atomically and streamed (never whole in memory), with its "sha256" and "size".
    Not fsynced: whoever reads it checks it against the sha256 recorded here (a resumed shard
    against its manifest), so a file torn by a crash of the machine is refused, not trusted; the
    final brain is fsynced when published."""
    from melvin.persist import dumps, write

    if ship == "bytes":
        data = dumps(g)
        return {"data": data, "sha256": _sha256(data), "size": len(data)}
    atomic_write(path, lambda f: write(g, f), sync=False)
    return {"path": path, "sha256": _file_sha256(path), "size": os.path.getsize(path)}


def _load(result):
    """A brain a task of this run wrote: its bytes must match the sha256 the task recorded; then
    the whole-graph check is skipped (it was consistent when saved; checksums and ids are still
    validated), which halves the load time of the merge stage."""
    from melvin.persist import load, loads

    path = result.get("path")
    digest = _file_sha256(path) if path else _sha256(result["data"])
    if digest != result["meta"]["sha256"]:
        raise DistributedError(f"brain {path or '(shipped bytes)'} does not match the sha256 its "
                               f"task recorded")
    return load(path, verify=False) if path else loads(result["data"], verify=False)


def merge_pair(a: dict, b: dict, limits: Limits, ship: str = "bytes", workdir: str | None = None,
               name: str = "merge") -> dict:
    """Merge two brains (a task): melvin.merge of the loaded brains, under limits."""
    from melvin.merge import merge_consuming

    t0 = time.perf_counter()
    m = merge_consuming([_load(a), _load(b)], limits)          # the loaded brains are scratch
    inputs = [x["meta"].get("index", x["meta"].get("name")) for x in (a, b)]
    return _merged(m, name, inputs, ship, workdir, t0)


def _merged(m, name: str, inputs: list, ship: str, workdir: str | None, t0: float) -> dict:
    """A merge task's result: the merged brain's bytes, or the brain written into workdir."""
    result = _emit(m, ship, workdir and os.path.join(workdir, f"{name}.mlv"))
    result["meta"] = {"kind": "merge", "name": name, "seconds": round(time.perf_counter() - t0, 3),
                      "sha256": result.pop("sha256"), "stats": _graph_stats(m),
                      "size": result.pop("size"), "inputs": inputs, "peak_rss": _peak_rss()}
    return result


def _meta_of(result: dict) -> dict:
    return result["meta"]


def _identity(x):
    return x


def _submit(client, fn, *args, **kw):
    """client.submit for tasks that carry a brain in their arguments (so losing a worker cannot
    lose it): dask warns about every task graph over 10 MB, and a brain is meant to be one."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
        return client.submit(fn, *args, **kw)


def _submit_data(client, value, **kw):
    """A task that returns `value`, carried in the task itself."""
    return _submit(client, _identity, value, **kw)


# --- the driver -----------------------------------------------------------------------------------

def _check_resume(shard: Shard, limits: Limits, seed: int, directory: str):
    """A reusable checkpointed shard: (manifest, brain path), or None."""
    path = os.path.join(directory, shard.filename(limits, seed))
    mpath = _manifest_path(path)
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or \
            manifest.get("version") != MANIFEST_VERSION or \
            manifest.get("identity") != shard.identity(limits, seed):
        return None
    try:
        digest = _file_sha256(path)
    except OSError:
        return None
    if digest != manifest.get("sha256"):
        log.warning("checkpointed shard %s does not match its manifest's checksum: retraining", path)
        return None
    return manifest, path


def _client_for(workers, scheduler, retries):
    """(client, cluster or None, description)."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise DistributedError("distributed training needs dask.distributed: "
                               "pip install 'melvin[distributed]' (or 'dask[distributed]')") from None
    if scheduler is not None and not isinstance(scheduler, str):
        return scheduler, None, getattr(scheduler, "scheduler", None) and scheduler.scheduler.address
    if scheduler is not None:
        client = Client(scheduler, timeout="30s")
        try:
            client.wait_for_workers(1, timeout=60)
        except Exception:
            client.close()
            raise
        return client, None, scheduler
    n = workers if workers is not None else (os.cpu_count() or 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    allowed = max(int(dask.config.get("distributed.scheduler.allowed-failures", 3)), retries)
    with dask.config.set({"distributed.scheduler.allowed-failures": allowed}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
        try:
            client = Client(cluster)
            client.wait_for_workers(n, timeout=120)
        except BaseException:
            cluster.close()
            raise
    return client, cluster, cluster.scheduler_address


def _worker_melvin() -> tuple:
    """Run on a worker: the melvin it imports (version, brain file format)."""
    import melvin
    from melvin import persist
    return melvin.__version__, persist.VERSION


def _check_workers(client) -> None:
    """Every worker imports the same melvin as this process (version and brain format), or a
    DistributedError says which does not and why. A worker that cannot import melvin's extension
    (another environment, a source tree first on its path) otherwise left its tasks waiting
    forever."""
    mine = _worker_melvin()
    found = client.run(_worker_melvin, on_error="return")
    bad = {w: r for w, r in found.items() if not isinstance(r, (tuple, list)) or tuple(r) != mine}
    if bad:
        detail = "; ".join(f"{w}: {r!r}" if isinstance(r, BaseException) else
                           f"{w}: melvin {r[0]}, brain format {r[1]}" for w, r in sorted(bad.items()))
        raise DistributedError(f"{len(bad)} of {len(found)} worker(s) cannot train with this "
                               f"melvin {mine[0]} (brain format {mine[1]}): {detail}")


def train_distributed(inputs, out, *, limits: Limits, workers: int | None = None, scheduler=None,
                      split: str = "lines", shard_bytes=None, checkpoint_dir=None, progress=None,
                      ship: str = "file", shards: int | None = None,
                      max_episode: int = DEFAULT_MAX_EPISODE, seed: int = 0, retries: int = 3,
                      resume: bool = True, limit_bytes: int | None = None,
                      vocab_bytes: int | None = None, final_memory=None,
                      _fault: dict | None = None) -> dict:
    """Train `inputs` on a dask.distributed cluster and save the merged brain atomically to `out`.

    workers=N starts a LocalCluster of N single-threaded worker processes; scheduler="tcp://HOST:
    8786" (or a distributed.Client) uses an existing cluster; with neither, a LocalCluster of
    os.cpu_count() workers. split, max_episode: as for the single-process trainer. shards /
    shard_bytes: the shard plan (default one shard per worker). vocab_bytes: the vocabulary sample
    (None: automatic, 0: none). ship: "file" (brains go through a
    directory shared by client and workers: checkpoint_dir, or a scratch directory beside `out`) or
    "bytes" (brains travel through dask; only the inputs must be visible to the workers).
    checkpoint_dir: keep finished shards there; resume reuses matching ones. progress: a callable
    progress(done, total, what) called as tasks finish. limit_bytes: plan only the first N input
    bytes (plain inputs). final_memory: max_memory of the last merge's brain (default
    limits.max_memory); the shards and inner merges stay within limits. Returns a summary dict
    (see the keys at the end); raises DistributedError when a shard fails for good (finished
    shards stay in checkpoint_dir)."""
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a melvin.Limits, got {type(limits).__name__}")
    if ship not in SHIPS:
        raise ValueError(f"ship must be one of {SHIPS}, got {ship!r}")
    if workers is not None and scheduler is not None:
        raise ValueError("give workers (a local cluster) or scheduler (an existing one), not both")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative int, got {retries!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    out = os.path.abspath(os.fspath(out))
    out_dir = os.path.dirname(out)
    if os.path.isdir(out):
        raise DistributedError(f"out {out} is a directory; give a brain file path")
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        raise DistributedError(f"out {out}: directory {out_dir} does not exist or is not writable")
    if checkpoint_dir is not None:
        checkpoint_dir = os.path.abspath(os.fspath(checkpoint_dir))
        os.makedirs(checkpoint_dir, exist_ok=True)

    def make_plan(n):
        return plan_shards(inputs, split=split, workers=n, shards=shards, shard_bytes=shard_bytes,
                           max_episode=max_episode, limit_bytes=limit_bytes,
                           vocab_bytes=vocab_bytes, exclude=[out])

    t_start = time.perf_counter()
    plan = early = None
    if scheduler is None:
        # A local cluster's size is known before it starts: plan now, and train the vocabulary
        # sample here while the worker processes start, instead of as the first task after.
        n_local = workers if workers is not None else (os.cpu_count() or 1)
        if isinstance(n_local, bool) or not isinstance(n_local, int) or n_local < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        plan = make_plan(n_local)
        if plan.sample is not None and not (checkpoint_dir and resume and all(
                os.path.exists(_manifest_path(os.path.join(checkpoint_dir, sh.filename(limits, seed))))
                for sh in plan)):
            # the core releases the GIL while it learns, so this overlaps the cluster's start
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="melvin-sample")
            early = pool.submit(train_shard, plan.sample, limits, seed, "bytes")
            pool.shutdown(wait=False)
    try:
        client, cluster, address = _client_for(workers, scheduler, retries)
    except BaseException:
        if early is not None:
            concurrent.futures.wait([early])
        raise
    run = uuid.uuid4().hex[:12]
    scratch = workdir = None
    handles = []            # dask Variables holding futures for tasks to wait on
    try:
        _check_workers(client)
        n_workers = len(client.nthreads()) or (workers or 1)
        dashboard = client.dashboard_link
        log.info("dask scheduler %s with %d worker(s); dashboard: %s", address, n_workers, dashboard)
        t_cluster = time.perf_counter() - t_start

        if plan is None:
            plan = make_plan(n_workers)
        total_bytes = plan.nbytes
        log.info("plan: %d shard(s) of ~%.1f MB (%d input bytes), vocabulary sample %s, ship=%s",
                 len(plan), sum(s.nbytes for s in plan) / len(plan) / 1e6, total_bytes,
                 f"{plan.sample.nbytes} bytes" if plan.sample else "none", ship)

        if ship == "file":
            workdir = checkpoint_dir
            if workdir is None:
                scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.shards-", dir=out_dir)
                workdir = scratch
        else:
            workdir = None

        last = limits if final_memory is None else \
            dataclasses.replace(limits, max_memory=final_memory)
        hits = [_check_resume(shard, limits, seed, checkpoint_dir) if (checkpoint_dir and resume)
                else None for shard in plan]
        # Pairs of the tree's first level whose left shard's task also merges the right one into
        # its graph while it is in memory (train_shard_and_absorb): shared files only, and both
        # shards to train
        fused = {i for i in range(0, len(plan) - 1, 2)
                 if ship == "file" and hits[i] is None and hits[i + 1] is None}

        # leaves: resumed shards (values) or training tasks (futures)
        leaves, metas, resumed = [], {}, 0
        shard_futures, fused_futures = {}, {}
        sample_future = sample_meta = sample_arg = None
        for shard, hit in zip(plan, hits):
            if hit is not None:
                manifest, path = hit
                meta = {"kind": "shard", "index": shard.index, "episodes": manifest["episodes"],
                        "failed_episodes": manifest.get("failed_episodes", 0),
                        "bytes": manifest["bytes"], "seconds": 0.0, "sha256": manifest["sha256"],
                        "stats": manifest.get("stats", {}), "resumed": True,
                        "brain": os.path.basename(path)}
                metas[shard.index] = meta
                resumed += 1
                if ship == "file":
                    leaves.append({"meta": meta, "path": path})
                else:
                    with open(path, "rb") as f:
                        data = f.read()
                    # carried in the task itself (not scattered), so losing a worker cannot lose it
                    leaves.append(_submit_data(client, {"meta": meta, "data": data},
                                               key=f"melvin-resumed-{run}-{shard.index:05d}",
                                               pure=False))
                    del data
                continue
            if shard.base != "empty" and sample_future is None and sample_arg is None:
                # the vocabulary sample: trained once, first; every shard task starts from it
                if early is not None:
                    # trained here while the cluster started. Each shard task gets it in its
                    # arguments (a file in the work directory, or the bytes), not as a dependency:
                    # the scheduler would start every task on the worker holding a dependency and
                    # the others would wait for work stealing
                    sample_arg = early.result()
                    sample_meta = sample_arg["meta"]
                    if ship == "file":
                        path = os.path.join(workdir, f"sample-{run}.mlv")
                        _atomic_write(path, sample_arg["data"], sync=False)
                        sample_arg = {"meta": sample_meta, "path": path}
                else:
                    sample_future = client.submit(train_shard, plan.sample, limits, seed, "bytes",
                                                  key=f"melvin-sample-{run}", retries=retries,
                                                  pure=False)
            base = (sample_future or sample_arg) if shard.base != "empty" else None
            keep = ship == "file" and checkpoint_dir is not None
            right = f"melvin-{run}-right-{shard.index - shard.index % 2:05d}"   # the pair's Variable
            if shard.index in fused:
                name = f"merge-{run}-1-{shard.index // 2}"
                fut = _submit(client, train_shard_and_absorb, shard, limits, seed, workdir, keep,
                              _fault, base, right, last if len(plan) == 2 else limits, name,
                              key=f"melvin-shard+{name}", retries=retries, pure=False)
                fused_futures[fut.key] = (shard, fut)
            else:
                fut = _submit(client, train_shard, shard, limits, seed, ship, workdir, keep, _fault,
                              base, key=f"melvin-shard-{run}-{shard.index:05d}", retries=retries,
                              pure=False)
                shard_futures[fut.key] = (shard, fut)
                if shard.index - 1 in fused:
                    from distributed import Variable
                    handles.append(Variable(right, client))
                    handles[-1].set(fut)
            leaves.append(fut)
        if resumed:
            log.info("resumed %d of %d shard(s) from %s", resumed, len(plan), checkpoint_dir)

        # a fixed tree of pairwise merges: the shape depends only on the plan
        merge_futures = {}
        level, nodes = 0, leaves
        while len(nodes) > 1:
            level += 1
            nxt = []
            for i in range(0, len(nodes) - 1, 2):
                if level == 1 and i in fused:
                    nxt.append(nodes[i])              # already merged by its task
                    continue
                name = f"merge-{run}-{level}-{i // 2}"
                fut = client.submit(merge_pair, nodes[i], nodes[i + 1],
                                    last if len(nodes) == 2 else limits, ship, workdir,
                                    name, key=f"melvin-{name}", retries=retries, pure=False)
                merge_futures[fut.key] = (nodes[i], nodes[i + 1], fut)
                nxt.append(fut)
            if len(nodes) % 2:
                nxt.append(nodes[-1])
            nodes = nxt
        root = nodes[0]
        del nodes, leaves

        from distributed import as_completed

        pending = [f for _, f in shard_futures.values()] + [f for _, f in fused_futures.values()] + \
            [f for *_, f in merge_futures.values()]
        if sample_future is not None:
            pending.insert(0, sample_future)
        total_tasks = len(pending)
        tasks = as_completed(pending)
        del pending
        done = 0
        merge_metas = []
        if progress is not None:
            progress(0, total_tasks, "start")
        for fut in tasks:
            if fut.status not in ("finished", "error", "cancelled"):
                # Finished, then lost with its worker before this loop got to it ("lost"): the
                # scheduler recomputes it, so wait for it again (was a rare "failed after N
                # retries: NoneType: None" when a killed worker held a finished shard).
                tasks.add(fut)
                continue
            if fut.status != "finished":
                try:
                    exc = fut.exception()
                except BaseException as e:  # noqa: BLE001 - a cancelled future raises here
                    exc = e
                if sample_future is not None and fut.key == sample_future.key:
                    what = "the vocabulary sample"
                elif fut.key in shard_futures:
                    what = f"shard {shard_futures[fut.key][0].index}"
                elif fut.key in fused_futures:
                    what = f"shard {fused_futures[fut.key][0].index} (or its merge)"
                else:
                    what = f"merge {fut.key}"
                for f in [f for _, f in shard_futures.values()] + \
                        [f for _, f in fused_futures.values()] + \
                        [f for *_, f in merge_futures.values()] + [sample_future]:
                    if f is not None:
                        f.cancel()
                keep = (f"; finished shards are kept in {checkpoint_dir} and a rerun resumes them"
                        if checkpoint_dir else "")
                raise DistributedError(f"{what} failed after {retries} retries: "
                                       f"{type(exc).__name__}: {exc}{keep}") from exc
            done += 1
            if sample_future is not None and fut.key == sample_future.key:
                sample_meta = client.submit(_meta_of, fut, pure=False).result()
                what = f"vocabulary sample ({sample_meta['seconds']:.1f} s)"
            elif fut.key in shard_futures:
                shard, _ = shard_futures[fut.key]
                if ship == "bytes" and checkpoint_dir is not None:
                    result = fut.result()
                    path = os.path.join(checkpoint_dir, result["meta"]["brain"])
                    _atomic_write(path, result["data"])
                    _write_manifest(_manifest_path(path),
                                    _manifest_for(shard, limits, seed, result["meta"]))
                    meta = result["meta"]
                    del result
                elif ship == "bytes":
                    meta = client.submit(_meta_of, fut, pure=False).result()
                else:
                    meta = fut.result()["meta"]
                metas[shard.index] = meta
                what = f"shard {shard.index} ({meta['seconds']:.1f} s)"
            elif fut.key in fused_futures:
                shard, _ = fused_futures.pop(fut.key)
                result = fut.result()
                metas[shard.index] = result["shard"]
                merge_metas.append(result["meta"])
                what = (f"shard {shard.index} ({result['shard']['seconds']:.1f} s) and "
                        f"{result['meta']['name'].split('-', 2)[-1]} "
                        f"({result['meta']['seconds']:.1f} s)")
                del result
            else:
                a, b, _ = merge_futures.pop(fut.key)
                meta = (client.submit(_meta_of, fut, pure=False).result() if ship == "bytes"
                        else fut.result()["meta"])
                merge_metas.append(meta)
                # the inputs are merged: let the cluster free them (bytes mode holds them in memory)
                for x in (a, b):
                    shard_futures.pop(getattr(x, "key", None), None)
                del a, b
                what = f"{meta['name'].split('-', 2)[-1]} ({meta['seconds']:.1f} s)"
            log.info("%d/%d done: %s", done, total_tasks, what)
            if progress is not None:
                progress(done, total_tasks, what)
            del fut
        del tasks
        shard_futures.clear()   # a future still held when the cluster closes is logged as lost

        # the final brain, atomically to `out`
        final = root.result() if hasattr(root, "key") else root
        if ship == "bytes":
            data = final["data"]
            _atomic_write(out, data)
            final_meta = final["meta"]
            del data
        else:
            _atomic_copy(final["path"], out)
            final_meta = final["meta"]
        del final, root
        seconds = time.perf_counter() - t_start
        st = final_meta.get("stats") or {}
        summary = {
            "out": out, "split": split, "ship": ship, "scheduler": address,
            "dashboard_link": dashboard, "workers": n_workers, "shards": len(plan),
            "shards_trained": len(plan) - resumed, "shards_resumed": resumed,
            "merges": len(merge_metas), "bytes": total_bytes,
            "episodes": st.get("episodes"),
            "failed_episodes": sum(m["failed_episodes"] for m in metas.values())
            + (sample_meta["failed_episodes"] if sample_meta else 0),
            "vocab_sample_bytes": plan.sample.nbytes if plan.sample else 0,
            "vocab_sample_seconds": sample_meta["seconds"] if sample_meta else 0.0,
            "seconds": round(seconds, 3), "cluster_seconds": round(t_cluster, 3),
            "shard_task_seconds": round(sum(m["seconds"] for m in metas.values()), 3),
            "merge_task_seconds": round(sum(m["seconds"] for m in merge_metas), 3),
            "root_merge_seconds": round(max((m["seconds"] for m in merge_metas
                                             if m["name"].endswith(f"-{level}-0")), default=0.0), 3),
            "mb_per_s": round(total_bytes / seconds / 1e6, 3) if seconds > 0 else None,
            "nodes": st.get("nodes"), "contexts": st.get("contexts"), "edges": st.get("edges"),
            "memory_bytes": st.get("memory_bytes"),
            "max_memory": last.max_memory if merge_metas else limits.max_memory,
            "worker_peak_rss": max((m.get("peak_rss", 0) for m in
                                    list(metas.values()) + merge_metas), default=0) or None,
            "hierarchy_levels": st.get("hierarchy_levels"),
            "hierarchy_nodes": st.get("hierarchy_nodes"), "sha256": final_meta.get("sha256"),
            "checkpoint_dir": checkpoint_dir,
            "plan": [[(p.path, p.start, p.end) for p in s.pieces] for s in plan],
        }
        log.info("distributed training done: %d shard(s), %d merge(s), %.1f s -> %s", len(plan),
                 len(merge_metas), seconds, out)
        return summary
    finally:
        if ship == "file" and workdir is not None:
            # merge results and the sample are scratch; shards stay only in checkpoint_dir
            for name in os.listdir(workdir) if os.path.isdir(workdir) else ():
                if name.startswith((f"merge-{run}-", f"sample-{run}.")):
                    try:
                        os.unlink(os.path.join(workdir, name))
                    except OSError:
                        pass
        if early is not None:
            concurrent.futures.wait([early])
        for handle in handles:
            try:
                handle.delete()
            except Exception:  # noqa: BLE001 - a closing cluster; the Variable goes with it
                pass
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if cluster is not None:
            client.close()
            cluster.close()
        elif isinstance(scheduler, str):
            client.close()


# --- held-out scoring (as tools/bench.py and melvin.train do) -------------------------------------

def heldout_bits(graph, path: str, limit: int | None = None) -> tuple[float, int]:
    """(bits, bytes) of the held-out file's first `limit` bytes split on b"\\n" (a trailing newline
    yields a final empty line), every line scored as one episode, newlines counted as bytes."""
    bits, nbytes = 0.0, 0
    with open(path, "rb") as f:
        left = limit
        rest = b""
        while True:
            n = 1 << 22 if left is None else min(left, 1 << 22)
            block = f.read(n) if n else b""
            if left is not None:
                left -= len(block)
            if not block:
                break
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            for line in lines:
                bits += graph.score_bits(line)
                nbytes += len(line) + 1
        bits += graph.score_bits(rest)
        nbytes += len(rest) + 1
    return bits, nbytes


# --- command line ---------------------------------------------------------------------------------

def _positive_int(text):
    import argparse
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _size(text):
    import argparse
    try:
        return parse_size(int(text) if text.strip().isdigit() else text, "size")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size_or_zero(text):
    return 0 if text.strip() in ("0", "0B") else _size(text)


def add_arguments(parser) -> None:
    """Add the distributed options to an argparse parser (melvin.train's). Does not import dask."""
    g = parser.add_argument_group("distributed training (dask.distributed; pip install "
                                  "'melvin[distributed]')")
    g.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="train on a local dask cluster of N worker processes (shards in parallel, "
                        "then a tree of merges); --max-memory is then per worker")
    g.add_argument("--scheduler", default=None, metavar="ADDR",
                   help="train on an existing dask cluster, e.g. tcp://host:8786")
    g.add_argument("--ship", choices=SHIPS, default="file",
                   help="how brains travel: 'file' through --shard-dir (a filesystem shared by all "
                        "machines; default) or 'bytes' through dask (no shared filesystem for "
                        "brains; the inputs must still be readable by every worker)")
    g.add_argument("--shards", type=_positive_int, default=None, metavar="N",
                   help="cut the input into N shards (default: one per worker; more shards "
                        "mean more merges, which cost time and held-out bits/byte)")
    g.add_argument("--shard-bytes", type=_size, default=None, metavar="SIZE",
                   help="cut the input into shards of about SIZE bytes (overrides --shards)")
    g.add_argument("--shard-dir", default=None, metavar="DIR",
                   help="keep finished shard brains and manifests here (default OUT.shards, "
                        "removed after success); --resume reuses matching ones")
    g.add_argument("--keep-shards", action="store_true",
                   help="keep the default OUT.shards directory after success")
    g.add_argument("--vocab-bytes", type=_size_or_zero, default=None, metavar="SIZE",
                   help="train the vocabulary sample (the patterns every shard starts from) on the "
                        "first SIZE bytes (default 1/32 of the input, at most 16M; 0 = none)")
    g.add_argument("--retries", type=int, default=3, metavar="N",
                   help="retry a failed task N times (default 3)")


def wants_distributed(args) -> bool:
    """Whether a parsed command line asks for distributed training."""
    return bool(getattr(args, "workers", None) or getattr(args, "scheduler", None))


def _worker_budget(client, n_local: int | None) -> int:
    """Default per-worker process budget: 80% of the smallest worker memory limit, else 80% of
    RAM shared by the local workers."""
    from melvin.limits import physical_memory
    limits = [w.get("memory_limit") or 0 for w in client.scheduler_info().get("workers", {}).values()]
    limits = [x for x in limits if x > 0]
    if limits:
        return int(min(limits) * 0.8)
    return int(physical_memory() * 0.8 / max(1, n_local or 1))


def graph_budget(process_budget: int) -> int:
    """The graph's max_memory for one worker's process budget: a pairwise merge peaks at about
    MERGE_FACTOR x one input graph's memory."""
    overhead = min(FIXED_OVERHEAD, process_budget // 2)
    budget = (process_budget - overhead) // MERGE_FACTOR
    if budget < 1 << 16:
        raise DistributedError(f"a per-worker budget of {process_budget} bytes leaves the graph "
                               f"{budget} bytes; it needs at least 64K")
    return budget


def run_from_args(args) -> int:
    """Run distributed training for a parsed melvin.train command line (with add_arguments's
    options). Uses args.inputs, out, split, max_memory (per worker), graph_memory, max_episode,
    seed, resume, limit_bytes, eval, eval_bytes, mapped, quiet, json. Prints the summary (JSON
    with --json) and returns the exit code (0 ok, 1 error, 130 interrupted)."""
    g = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    if g("workers") and g("scheduler"):
        print("melvin train: error: give --workers or --scheduler, not both", file=sys.stderr)
        return 2
    for opt in ("checkpoint_every", "skip_bad"):
        if g(opt):
            log.warning("--%s is not used by distributed training (shards are the checkpoints)",
                        opt.replace("_", "-"))
    level = str(g("log_level") or "WARNING").upper()
    if level != "DEBUG":
        # dask logs every scheduler and nanny event at INFO on stderr (configured when
        # distributed is imported): keep the CLI's output clean
        try:
            import distributed  # noqa: F401
        except ImportError:
            pass
        logging.getLogger("distributed").setLevel(logging.WARNING)
    out = os.path.abspath(g("out"))
    user_dir = g("shard_dir")
    shard_dir = os.path.abspath(user_dir) if user_dir else out + ".shards"
    bar = None
    client = cluster = None
    try:
        if g("scheduler"):
            client, _, _ = _client_for(None, g("scheduler"), g("retries", 3))
        process = None
        if g("max_memory") is not None:
            process = parse_size(g("max_memory"), "--max-memory")
        elif g("graph_memory") is None:
            if client is not None:
                process = _worker_budget(client, None)
            else:
                from melvin.limits import physical_memory
                process = int(physical_memory() * 0.8 / g("workers"))
        budget = parse_size(g("graph_memory"), "--graph-memory") if g("graph_memory") is not None \
            else graph_budget(process)
        final_memory = None
        if process is not None:
            # the last merge's brain is not merged again: it may be as large as a brain that a
            # single process of this budget trains (the two inputs of at most `budget` each and
            # their sum still fit one worker)
            from melvin.train import graph_budget as single_budget
            final_memory = max(budget, single_budget(process))
        limits = Limits(max_memory=budget, hierarchy=not g("bytewise", False),
                        byte_context=g("byte_context", None),
                        word_tokens=not g("free_patterns", False),
                        embeddings=not g("no_embeddings", False))

        def progress(done, total, what):
            nonlocal bar
            if g("quiet"):
                return
            if bar is None:
                from tqdm import tqdm
                bar = tqdm(total=total, unit="task", file=sys.stderr, desc="shards+merges",
                           dynamic_ncols=True)
            if done:
                bar.update(done - bar.n)
                bar.set_postfix_str(what, refresh=True)

        summary = train_distributed(
            g("inputs"), out, limits=limits, workers=g("workers"),
            scheduler=client if client is not None else None, split=g("split") or "lines",
            shard_bytes=g("shard_bytes"), shards=g("shards"), checkpoint_dir=shard_dir,
            progress=progress, ship=g("ship") or "file",
            max_episode=g("max_episode") or DEFAULT_MAX_EPISODE, seed=g("seed", 0) or 0,
            retries=g("retries", 3), resume=bool(g("resume")), limit_bytes=g("limit_bytes"),
            vocab_bytes=g("vocab_bytes"), final_memory=final_memory)
        if bar is not None:
            bar.close()
            bar = None
        if g("mapped"):                   # (the merged brain, rewritten by this process)
            import melvin
            t0 = time.perf_counter()
            melvin.load(out).save(out, mapped=True)
            summary["mapped_seconds"] = round(time.perf_counter() - t0, 3)
        if not user_dir and not g("keep_shards"):
            shutil.rmtree(shard_dir, ignore_errors=True)
            summary["checkpoint_dir"] = None
        if g("eval"):
            import melvin
            t0 = time.perf_counter()
            bits, nbytes = heldout_bits(melvin.load(out), g("eval"), g("eval_bytes"))
            summary["bits_per_byte"] = round(bits / nbytes, 4) if nbytes else None
            summary["eval_bytes"] = nbytes
            summary["eval_seconds"] = round(time.perf_counter() - t0, 3)
    except KeyboardInterrupt:
        print(f"melvin train: interrupted; finished shards are kept in {shard_dir} (--resume "
              f"reuses them)", file=sys.stderr)
        return 130
    except (MelvinError, OSError, ValueError) as exc:
        print(f"melvin train: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
    summary.pop("plan", None)
    if g("json"):
        print(json.dumps(summary, sort_keys=True))
    else:
        rows = [("brain", summary["out"]), ("cluster", f"{summary['scheduler']} "
                                                       f"({summary['workers']} workers)"),
                ("dashboard", summary["dashboard_link"]),
                ("shards", f"{summary['shards']} ({summary['shards_resumed']} resumed), "
                           f"{summary['merges']} merges, ship={summary['ship']}"),
                ("input bytes", f"{summary['bytes']:,}"), ("episodes", f"{summary['episodes']:,}"),
                ("seconds", f"{summary['seconds']:.1f} (shard tasks {summary['shard_task_seconds']:.1f}"
                            f" s, merges {summary['merge_task_seconds']:.1f} s)"),
                ("MB/s", str(summary["mb_per_s"])),
                ("nodes / contexts / edges",
                 f"{summary['nodes']:,} / {summary['contexts']:,} / {summary['edges']:,}"),
                ("graph memory", f"{summary['memory_bytes'] / 1e6:.1f} MB of "
                                 f"{summary['max_memory'] / 1e6:.1f} MB")]
        if summary["worker_peak_rss"]:
            rows.append(("worker peak RSS", f"{summary['worker_peak_rss'] / 1e6:.1f} MB"))
        if "bits_per_byte" in summary:
            rows.append(("held-out bits/byte", f"{summary['bits_per_byte']} "
                                               f"({summary['eval_bytes']:,} bytes)"))
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:>{width}}: {v}")
    return 0
