"""Train a brain on large inputs in bounded memory, with deterministic checkpoints and resume.

    python -m melvin train corpus/ enwiki.xml.bz2 --out brain.mlv --max-memory 2G
    python tools/train.py big.txt --out big.mlv --resume --eval heldout.txt --json

Inputs are files, directories (recursive, sorted), "-" for stdin, .gz/.bz2/.xz/.zst, and MediaWiki
XML dumps (.xml, .xml.bz2 ...); see melvin.inputs for what an episode is under each --split.

Memory. --max-memory is the budget of the whole training process (like KenLM's -S): "80%" of
physical RAM (the default), "2G", "512M" or bytes. The graph gets

    graph budget = (max_memory - min(FIXED_OVERHEAD, max_memory / 2)) / (1 + RESUME_FACTOR)

where FIXED_OVERHEAD (64 MiB) is the interpreter, numpy, read buffers and the streaming save's
chunks, and RESUME_FACTOR (0.4) covers the transients above the graph's own tables: growing an
index refills it through 8 bytes of scratch per item (up to ~20% of the graph), and loading a
checkpoint on --resume maps the file while decoding it into the tables (tools/bench_load.py: a
607 MB graph loads at 626 MB peak RSS, a 1.18 GB one at 1153 MB, the interpreter included; it
was 1.3 x memory_bytes while loading copied every record field first). 88 MB of big.txt under
--max-memory 1G peaks at ~700 MB RSS; a factor of 0.2 (an 800 MB graph) peaked at 864 MB and
scored worse on held-out text (1.761 against 1.755 bits/byte: its one prune came later and cut
deeper), so the margin stays. The budget is fixed when training starts and saved in the brain,
so it must leave room for a later resume. The graph prunes itself whenever it reaches its
budget, so training never stops for memory. --graph-memory sets the graph budget directly
instead. Episodes longer than --max-episode (128M) are cut into pieces; one episode buffer of
up to that size comes on top of the budget.

Checkpoints. Every --checkpoint-every bytes of input (default 64M; 0 = only at the end), at the first
episode boundary at or past each multiple, the brain is saved atomically to --out and the position
is recorded in OUT.manifest.json: per input its path, size and fingerprint (sha256 of the size and
the first and last MiB), and the exact position (input index, item, offset, episode count). The
manifest first records the checkpoint as "pending", then the brain is saved, then the manifest
commits it, so a kill at any moment leaves a brain that one of the two manifest positions describes
(matched by the brain's own episode and byte counters). --resume loads that brain and continues
from its position; the result is byte-identical to an uninterrupted run with the same checkpoint
schedule. A changed input (size or fingerprint) or a different input list is refused.

The finished brain is written in the compact format 3, like the checkpoints, unless --mapped asks
for format 4, which melvin.load uses in place instead of rebuilding its indexes (see the README's
"Format 4"). With distributed training the merged brain is rewritten so by this process.

Input bytes (for --checkpoint-every, --limit-bytes and the summary) are bytes of the decompressed
text consumed, delimiters included; for XML dumps, bytes of the extracted article text. The
progress bar counts bytes of the raw (possibly compressed) inputs, so its total and ETA are exact.

Exit codes: 0 done (or stopped at --limit-bytes), 1 error (bad input, refused resume, I/O),
2 usage, 130 SIGINT and 143 SIGTERM (after finishing the current batch of episodes and writing a
checkpoint).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import sys
import time

from melvin.errors import MelvinError
from melvin.graph import PORT_TEXT
from melvin.inputs import DEFAULT_MAX_EPISODE, SPLITS, InputError, Reader, collect_sources, fingerprint
from melvin.limits import Limits, parse_size

log = logging.getLogger("melvin.train")

FIXED_OVERHEAD = 64 << 20
RESUME_FACTOR = 0.4
MANIFEST_FORMAT = "melvin-train-manifest"
MANIFEST_VERSION = 1
DEFAULT_CHECKPOINT_EVERY = 64 << 20


class TrainError(MelvinError):
    """Training cannot start or continue (refused resume, bad options)."""


def graph_budget(max_memory) -> int:
    """The graph's Limits.max_memory for a process budget (see the module docstring)."""
    total = parse_size(max_memory, "--max-memory")
    overhead = min(FIXED_OVERHEAD, total // 2)
    budget = int((total - overhead) / (1 + RESUME_FACTOR))
    if total < 2 * FIXED_OVERHEAD:
        log.warning("--max-memory %d bytes is below what the process itself needs (~%d MiB): the "
                    "graph gets %d bytes, peak RSS will exceed the budget", total,
                    FIXED_OVERHEAD >> 20, budget)
    if budget < 1 << 16:
        raise TrainError(f"--max-memory {max_memory!r} leaves the graph {budget} bytes; it needs "
                         f"at least 64K")
    return budget


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:  # pragma: no cover - psutil is a dependency
        return peak_rss()


def _size_arg(name, allow_zero=False):
    def parse(text):
        if allow_zero and text.strip() in ("0", "0B"):
            return 0
        try:
            return parse_size(text if not text.strip().isdigit() else int(text), name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def byte_context_arg(text):
    """--byte-context: comma-separated lengths ("2,4"; "" for none), checked as Limits checks them."""
    try:
        lengths = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated lengths such as 2,4, got "
                                         f"{text!r}") from None
    try:
        Limits(byte_context=lengths)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return lengths


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="melvin train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="files, directories, '-' (stdin); .gz/.bz2/.xz/.zst; .xml[.bz2] wiki dumps")
    ap.add_argument("--out", required=True, help="brain file to write (and checkpoint)")
    ap.add_argument("--split", choices=SPLITS, default=None,
                    help="what one episode is (default: lines)")
    ap.add_argument("--max-memory", default=None,
                    help="process memory budget: 80%%, 2G, 512M, bytes (default 80%% of RAM)")
    ap.add_argument("--graph-memory", default=None,
                    help="set the graph's own budget (Limits.max_memory) directly (with --workers: "
                         "each shard's; with --max-memory too, the last merge may still grow to "
                         "a single process's graph budget)")
    ap.add_argument("--bytewise", action="store_true",
                    help="learn every byte as its own token (Limits(hierarchy=False)): the best "
                         "bits per byte, at about a fifth of the speed and with far more memory "
                         "per input byte")
    ap.add_argument("--free-patterns", action="store_true",
                    help="let text patterns span words (Limits(word_tokens=False)), as earlier "
                         "versions did: worse bits per byte (big.txt at --max-memory 1G: 1.874 "
                         "against 1.770)")
    ap.add_argument("--no-embeddings", action="store_true",
                    help="no embeddings and no categories (Limits(embeddings=False)): trains "
                         "~10%% faster, at slightly worse bits per byte")
    ap.add_argument("--byte-context", type=byte_context_arg, default=None, metavar="N,N,...",
                    help="byte-suffix context lengths (Limits.byte_context; default 2,4,24, "
                         "bytewise 2,3,4,5,6,8,12,24). '2,4' trains faster in less memory "
                         "(big.txt at --max-memory 1G: 6.2 against 3.9 MB/s, no prune against "
                         "1, 400 against 740 MB of RSS), but scores 1.805 against 1.760 bits "
                         "per byte on held-out, and without the 24-byte context a sentence seen "
                         "once is not recalled")
    ap.add_argument("--checkpoint-every", type=_size_arg("--checkpoint-every", allow_zero=True),
                    default=None,
                    help="checkpoint every N input bytes (64M; 0 = only at the end)")
    ap.add_argument("--max-episode", type=_size_arg("--max-episode"), default=None,
                    help="cut longer episodes into pieces of this size (default 128M)")
    ap.add_argument("--resume", action="store_true",
                    help="continue from the checkpoint at --out (starts fresh if there is none)")
    ap.add_argument("--skip-bad", action="store_true",
                    help="warn about and skip missing, unreadable or corrupt inputs")
    ap.add_argument("--limit-bytes", type=_size_arg("--limit-bytes"), default=None,
                    help="stop once N input bytes (counted from the start of training) are fed")
    ap.add_argument("--eval", metavar="FILE",
                    help="held-out text: report bits per byte (lines scored as in tools/bench.py)")
    ap.add_argument("--eval-bytes", type=_size_arg("--eval-bytes"), default=None,
                    help="score only the first N bytes of --eval FILE")
    ap.add_argument("--mapped", action="store_true",
                    help="write the finished brain in format 4, which melvin.load uses in place "
                         "(a 1.18 GB graph starts in ~0.6 s instead of ~1.0 s; the file is ~2.3x "
                         "larger); checkpoints stay in the compact format 3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--json", action="store_true", help="final summary as JSON on stdout")
    ap.add_argument("--log-level", default="WARNING", type=str.upper,
                    choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                    help="logging threshold, any case (default WARNING)")
    from melvin.distributed import add_arguments as _add_distributed

    _add_distributed(ap)  # --workers N / --scheduler ADDR (dask is imported only when used)
    return ap


class _TqdmHandler(logging.StreamHandler):
    """Log records go through tqdm.write while a bar is showing, so the bar is not torn."""

    bar = None

    def emit(self, record):
        if self.bar is None:
            return super().emit(record)
        try:
            self.bar.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _write_json_atomic(path: str, data: dict):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_eval_lines(path: str, limit: int | None = None):
    """Lines of the held-out file exactly as tools/bench.py splits them (data.split(b"\\n") of the
    first `limit` bytes, so a trailing newline yields a final empty line), streamed."""
    from melvin.inputs import Stream, source_for

    opened = Stream(source_for(path))
    try:
        stream, left, last = opened.stream, limit, b""
        while True:
            cap = 1 << 24 if left is None else min(left, 1 << 24)
            if cap == 0:
                break
            line = stream.readline(cap)
            if not line:
                break
            if left is not None:
                left -= len(line)
            if line.endswith(b"\n"):
                yield last + line[:-1]
                last = b""
            else:
                last += line
        yield last
    finally:
        opened.close()


def heldout_bits(graph, path: str, limit: int | None = None, stop=lambda: False):
    bits, nbytes = 0.0, 0
    for line in read_eval_lines(path, limit):
        bits += graph.score_bits(line)
        nbytes += len(line) + 1
        if stop():
            break
    return bits, nbytes


class Trainer:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.manifest_path = self.out + ".manifest.json"
        self.signal = None
        self.bar = None
        self.checkpoints = 0
        self.save_seconds = 0.0
        self.skipped: list[str] = []
        self._last_saved = None
        self._next_postfix = 0.0
        self._postfix_cost = 0.0

    # --- signals ---------------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("%s: finishing the current batch of episodes, then writing a checkpoint",
                    signal.Signals(signum).name)

    def _install_signals(self):
        self._old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass

    def _restore_signals(self):
        for sig, handler in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, handler)

    # --- inputs and manifest ---------------------------------------------------------------------
    def _describe_inputs(self, sources):
        records, kept = [], []
        for src in sources:
            rec = {"path": "-" if src.is_stdin else os.path.abspath(src.path),
                   "compression": src.compression, "wiki": src.wiki}
            if src.seekable:
                try:
                    rec.update(fingerprint(src.path))
                except InputError as exc:
                    if not self.args.skip_bad:
                        raise
                    log.warning("skipping bad input: %s", exc)
                    self.skipped.append(str(exc))
                    continue
            records.append(rec)
            kept.append(src)
        return kept, records

    def _load_manifest(self) -> dict:
        try:
            with open(self.manifest_path) as f:
                m = json.load(f)
        except (OSError, ValueError) as exc:
            raise TrainError(f"cannot read the checkpoint manifest {self.manifest_path}: {exc}") from None
        if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
            raise TrainError(f"{self.manifest_path} is not a melvin training manifest")
        if m.get("version") != MANIFEST_VERSION:
            raise TrainError(f"{self.manifest_path}: manifest version {m.get('version')} is not "
                             f"supported (this melvin writes {MANIFEST_VERSION})")
        return m

    def _check_resume_inputs(self, manifest: dict, records: list[dict]):
        old = manifest.get("inputs", [])
        if any("fingerprint" not in r for r in records):
            raise TrainError("cannot --resume a run that reads standard input or a pipe")
        old_paths = [r.get("path") for r in old]
        new_paths = [r["path"] for r in records]
        if old_paths != new_paths:
            gone = [p for p in old_paths if p not in new_paths]
            new = [p for p in new_paths if p not in old_paths]
            detail = []
            if gone:
                detail.append(f"missing now: {', '.join(gone[:3])}{' ...' if len(gone) > 3 else ''}")
            if new:
                detail.append(f"new: {', '.join(new[:3])}{' ...' if len(new) > 3 else ''}")
            if not detail:
                detail.append("same files in a different order")
            raise TrainError(f"the inputs differ from the checkpoint's ({'; '.join(detail)}); "
                             f"refusing to resume: pass the same inputs, or start over without --resume")
        for o, n in zip(old, records):
            if o.get("size") != n.get("size") or o.get("fingerprint") != n.get("fingerprint"):
                what = (f"size {o.get('size')} -> {n.get('size')}" if o.get("size") != n.get("size")
                        else "content fingerprint differs")
                raise TrainError(f"input {n['path']} changed since the checkpoint ({what}); refusing "
                                 f"to resume: restore it, or start over without --resume")

    def _write_manifest(self):
        _write_json_atomic(self.manifest_path, self.manifest)

    # --- checkpoints -----------------------------------------------------------------------------
    def _position(self, input_index, reader) -> dict:
        if reader is None:
            pos = {"item": 0, "offset": 0, "line_start": True, "consumed": 0}
        else:
            pos = reader.position
        s = self.graph.stats()
        pos.update(input=input_index, bytes=self.bytes_done, episodes=self.episodes_total,
                   graph={"episodes": s["episodes"], "bytes_fed": s["bytes_fed"]})
        return pos

    def checkpoint(self, pos: dict, complete: bool = False):
        mapped = complete and getattr(self.args, "mapped", False)
        if self._last_saved == pos and self.manifest.get("complete") == complete and not mapped:
            return
        t0 = time.perf_counter()
        self.manifest["pending"] = pos
        self._write_manifest()
        self.graph.save(self.out, mapped=mapped)
        self.manifest["position"] = pos
        self.manifest["pending"] = None
        self.manifest["complete"] = complete
        self.manifest["skipped"] = self.skipped
        self._write_manifest()
        self._last_saved = pos
        self.checkpoints += 1
        dt = time.perf_counter() - t0
        self.save_seconds += dt
        log.info("checkpoint at input %d offset %d (%d bytes, %d episodes) in %.2f s",
                 pos["input"], pos["offset"], pos["bytes"], pos["episodes"], dt)

    def _learn_batch(self, batch: list, name: str) -> int:
        """Learn a batch of episodes; returns how many failed (each is logged and skipped)."""
        refused = self.graph._feed_batch(batch, PORT_TEXT)
        for at, exc in refused:
            log.warning("episode %d of %s not learned: %s", self.episodes_total + at, name, exc)
        self.episodes_total += len(batch)
        return len(refused)

    # --- progress --------------------------------------------------------------------------------
    def _update_bar(self, raw_done):
        bar = self.bar
        if raw_done > bar.n:
            bar.update(raw_done - bar.n)
        now = time.monotonic()
        if now >= self._next_postfix:
            t0 = time.perf_counter()
            s = self.graph.stats()
            self._postfix_cost = time.perf_counter() - t0
            bar.set_postfix_str(f"nodes={s['nodes']:,} edges={s['edges']:,} "
                                f"rss={current_rss() / 1e6:.0f}MB pruned={s['prunes']}", refresh=False)
            # keep the stats walk under ~2% of the time
            self._next_postfix = now + max(1.0, 50 * self._postfix_cost)

    # --- the run ---------------------------------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        try:
            return self._run()
        except KeyboardInterrupt:
            self._close_bar()
            print("melvin train: interrupted again; the last completed checkpoint is intact",
                  file=sys.stderr)
            return 130
        finally:
            self._restore_signals()
            self._close_bar()

    def _run(self) -> int:
        import melvin

        args = self.args
        split = args.split
        max_episode = args.max_episode
        out_dir = os.path.dirname(self.out)
        if os.path.isdir(self.out):
            raise TrainError(f"--out {args.out} is a directory; give a brain file path")
        if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
            raise TrainError(f"--out {args.out}: directory {out_dir} does not exist or is not writable")
        if args.eval and not os.access(args.eval, os.R_OK):
            raise TrainError(f"--eval {args.eval}: no such readable file")
        sources = collect_sources(args.inputs, skip_bad=args.skip_bad,
                                  exclude=[self.out, self.manifest_path], skipped=self.skipped)
        sources, records = self._describe_inputs(sources)
        if not sources:
            raise TrainError("no readable input files")

        resumed = False
        manifest = None
        if args.resume:
            if os.path.exists(self.manifest_path):
                manifest = self._load_manifest()
            elif os.path.exists(self.out):
                raise TrainError(f"{self.out} exists but has no manifest ({self.manifest_path}); "
                                 f"cannot resume it")
            else:
                log.info("no checkpoint at %s: starting fresh", self.out)
        t_load = 0.0
        if manifest is not None and not os.path.exists(self.out) and manifest.get("position") is None:
            log.info("the checkpoint at %s never committed: starting fresh", self.out)
            manifest = None
        if manifest is not None:
            self._check_resume_inputs(manifest, records)
            for name, given, saved in (("--split", split, manifest.get("split")),
                                       ("--max-episode", max_episode, manifest.get("max_episode"))):
                if given is not None and given != saved:
                    raise TrainError(f"{name} {given} differs from the checkpoint's {saved}; refusing "
                                     f"to resume")
            split, max_episode = manifest["split"], manifest["max_episode"]
            t0 = time.perf_counter()
            try:
                self.graph = melvin.load(self.out)
            except FileNotFoundError:
                raise TrainError(f"the checkpoint brain {self.out} is missing (its manifest exists)") from None
            t_load = time.perf_counter() - t0
            want = None
            if args.graph_memory is not None:
                want = parse_size(args.graph_memory, "--graph-memory")
            elif args.max_memory is not None:
                want = graph_budget(args.max_memory)
            if args.bytewise and self.graph.limits.hierarchy:
                raise TrainError("--bytewise: the checkpoint was trained with hierarchy; refusing "
                                 "to resume (omit --bytewise, or start a new brain)")
            if args.free_patterns and self.graph.limits.word_tokens:
                raise TrainError("--free-patterns: the checkpoint was trained with word patterns; "
                                 "refusing to resume (omit --free-patterns, or start a new brain)")
            if args.no_embeddings and self.graph.limits.embeddings:
                raise TrainError("--no-embeddings: the checkpoint was trained with embeddings; "
                                 "refusing to resume (omit --no-embeddings, or start a new brain)")
            if args.byte_context is not None and args.byte_context != self.graph.limits.byte_context:
                raise TrainError(f"--byte-context: the checkpoint was trained with byte contexts "
                                 f"{self.graph.limits.byte_context}; refusing to resume (omit the "
                                 f"option to keep the checkpoint's)")
            if want is not None and want != self.graph.limits.max_memory:
                raise TrainError(f"the checkpoint's graph budget is {self.graph.limits.max_memory} "
                                 f"bytes; the given memory option asks for {want}: refusing to resume "
                                 f"(omit the option to keep the checkpoint's)")
            s = self.graph.stats()
            have = {"episodes": s["episodes"], "bytes_fed": s["bytes_fed"]}
            pos = None
            for cand in (manifest.get("pending"), manifest.get("position")):
                if isinstance(cand, dict) and cand.get("graph") == have:
                    pos = cand
                    break
            if pos is None and manifest.get("position") is None:
                log.info("the brain at %s predates its manifest, which never committed: starting "
                         "fresh", self.out)
                manifest = None
            elif pos is None:
                raise TrainError(f"the brain at {self.out} does not match its manifest (neither the "
                                 f"committed nor the pending checkpoint); cannot resume")
        if manifest is not None:
            self.manifest = manifest
            self.manifest["position"], self.manifest["pending"] = pos, None
            self.skipped = list(manifest.get("skipped", [])) + self.skipped
            self._last_saved = pos
            resumed = True
            start_input = int(pos["input"])
            start_pos = pos
            self.bytes_done = int(pos["bytes"])
            self.episodes_total = int(pos["episodes"])
            self.checkpoint_every = (args.checkpoint_every if args.checkpoint_every is not None
                                     else int(manifest.get("checkpoint_every", DEFAULT_CHECKPOINT_EVERY)))
            log.info("resuming from input %d offset %d (%d bytes, %d episodes); loaded in %.2f s",
                     start_input, pos["offset"], self.bytes_done, self.episodes_total, t_load)
        else:
            split = split or "lines"
            max_episode = max_episode or DEFAULT_MAX_EPISODE
            if args.graph_memory is not None:
                budget = parse_size(args.graph_memory, "--graph-memory")
            else:
                budget = graph_budget(args.max_memory if args.max_memory is not None else "80%")
            self.graph = melvin.Graph(melvin.Limits(max_memory=budget, hierarchy=not args.bytewise,
                                                    byte_context=args.byte_context,
                                                    word_tokens=not args.free_patterns,
                                                    embeddings=not args.no_embeddings),
                                      seed=args.seed)
            try:
                os.unlink(self.manifest_path)       # a stale manifest must not pair with the new brain
            except FileNotFoundError:
                pass
            self.checkpoint_every = (args.checkpoint_every if args.checkpoint_every is not None
                                     else DEFAULT_CHECKPOINT_EVERY)
            self.manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                             "brain": os.path.basename(self.out), "split": split,
                             "max_episode": max_episode, "checkpoint_every": self.checkpoint_every,
                             "limits": self.graph.limits.to_dict(), "inputs": records,
                             "position": None, "pending": None, "complete": False, "skipped": []}
            start_input, start_pos = 0, None
            self.bytes_done = 0
            self.episodes_total = 0
        self.manifest["checkpoint_every"] = self.checkpoint_every

        if manifest is not None and manifest.get("complete"):
            log.info("the checkpoint is complete: nothing left to train")
        log.info("training on %d input(s), split=%s, graph budget %d bytes, checkpoint every %d bytes",
                 len(sources), split, self.graph.limits.max_memory, self.checkpoint_every)

        sizes = [s.size for s in sources]
        total_raw = None if any(x is None for x in sizes) else sum(sizes)
        raw_before = sum(sizes[:start_input]) if total_raw is not None else 0
        if not args.quiet:
            from tqdm import tqdm
            self.bar = tqdm(total=total_raw, unit="B", unit_scale=True, unit_divisor=1000,
                            file=sys.stderr, dynamic_ncols=True, mininterval=0.5, smoothing=0.1,
                            desc="train", initial=raw_before)
            _TqdmHandler.bar = self.bar
        bytes_at_start, episodes_at_start = self.bytes_done, self.episodes_total
        every, limit = self.checkpoint_every, args.limit_bytes
        next_ckpt = (self.bytes_done // every + 1) * every if every else None
        # The reader hands over its episodes a read chunk's lines at a time, and they go to the
        # core as one call (Graph._feed_batch): a step of Python per episode cost ~8% of
        # training on big.txt's 2.2 million lines. A batch ends at the episode that reaches the
        # next checkpoint or the byte limit, so both fall where they would one episode at a time.
        def batch_stop():
            at = next_ckpt if next_ckpt is not None else 1 << 62
            if limit is not None and limit < at:
                at = limit
            return at - base
        failed = 0
        stopped = "complete"
        reader = None
        index = start_input

        def position_now():
            if reader is not None:
                return self._position(index, reader)
            if index == start_input and start_pos is not None:
                pos = dict(start_pos)
                pos.update(self._position(index, None), **{k: start_pos[k] for k in
                                                          ("item", "offset", "line_start", "consumed")})
                return pos
            return self._position(index, None)

        t_start = time.perf_counter()
        try:
            if limit is not None and self.bytes_done >= limit:
                stopped = "limit"
            while stopped == "complete" and index < len(sources):
                if self.signal is not None:
                    break
                src = sources[index]
                reader = Reader(src, split, max_episode=max_episode,
                                start=start_pos if index == start_input else None)
                base = self.bytes_done - reader.consumed
                try:
                    for batch in reader.batches(batch_stop):
                        failed += self._learn_batch(batch, src.name)
                        self.bytes_done = base + reader.consumed
                        if self.bar is not None:
                            self._update_bar(raw_before + reader.raw_position)
                        if next_ckpt is not None and self.bytes_done >= next_ckpt:
                            self.checkpoint(position_now())
                            next_ckpt = (self.bytes_done // every + 1) * every
                        if limit is not None and self.bytes_done >= limit:
                            stopped = "limit"
                            break
                        if self.signal is not None:
                            break
                except InputError as exc:
                    if not args.skip_bad:
                        self.checkpoint(position_now())
                        raise
                    log.warning("skipping the rest of a bad input: %s", exc)
                    self.skipped.append(str(exc))
                    self.bytes_done = base + reader.consumed
                    reader = None
                    index += 1
                    raw_before += sizes[index - 1] or 0
                    continue
                if stopped != "complete" or self.signal is not None:
                    break
                self.bytes_done = base + reader.consumed
                reader = None
                raw_before += sizes[index] or 0
                index += 1
                if self.bar is not None:
                    self._update_bar(raw_before)
            if self.signal is not None:
                stopped = "signal"
            train_seconds = time.perf_counter() - t_start
            final_pos = position_now()
            if self.bar is not None:      # end on the final figures, not the last sampled ones
                self._next_postfix = 0.0
                self._update_bar(self.bar.n)
            self.checkpoint(final_pos, complete=(stopped == "complete"))
        finally:
            self._close_bar()

        s = self.graph.stats()
        levels = s["hierarchy_levels"]
        nbytes = self.bytes_done - bytes_at_start
        summary = {
            "out": self.out, "split": split, "inputs": len(sources),
            "bytes": nbytes, "total_bytes": self.bytes_done,
            "episodes": self.episodes_total - episodes_at_start, "total_episodes": self.episodes_total,
            "seconds": round(train_seconds, 3),
            "mb_per_s": round(nbytes / train_seconds / 1e6, 3) if train_seconds > 0 else None,
            "nodes": s["nodes"], "contexts": s["contexts"], "edges": s["edges"],
            "hierarchy_levels": max(levels) if levels else 0, "hierarchy_nodes": s["hierarchy_nodes"],
            "categories": s["categories"], "categorized_nodes": s["embeddings"],
            "memory_bytes": s["memory_bytes"], "max_memory": self.graph.limits.max_memory,
            "peak_memory_bytes": s["peak_memory_bytes"], "prunes": s["prunes"],
            "pruned_edges": s["pruned_edges"], "failed_episodes": failed,
            "checkpoints": self.checkpoints, "save_seconds": round(self.save_seconds, 3),
            "load_seconds": round(t_load, 3), "resumed": resumed, "stopped": stopped,
            "skipped_inputs": self.skipped,
        }
        code = {None: 0, signal.SIGINT: 130, signal.SIGTERM: 143}.get(self.signal, 1)
        if args.eval and self.signal is None:
            t0 = time.perf_counter()
            bits, ebytes = heldout_bits(self.graph, args.eval, args.eval_bytes,
                                        stop=lambda: self.signal is not None)
            summary["bits_per_byte"] = round(bits / ebytes, 4) if ebytes else None
            summary["eval_bytes"] = ebytes
            summary["eval_seconds"] = round(time.perf_counter() - t0, 3)
            if self.signal is not None:
                code = 130 if self.signal == signal.SIGINT else 143
                summary["bits_per_byte"] = None
        summary["peak_rss_bytes"] = peak_rss()
        self._report(summary)
        return code

    def _close_bar(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            _TqdmHandler.bar = None

    def _report(self, summary: dict):
        if self.args.json:
            print(json.dumps(summary, sort_keys=True))
            return
        rows = [
            ("brain", summary["out"] + ("" if summary["stopped"] == "complete"
                                        else f"  (stopped: {summary['stopped']}; --resume continues)")),
            ("input bytes", f"{summary['bytes']:,}" + (f"  (total {summary['total_bytes']:,})"
                                                       if summary["resumed"] else "")),
            ("episodes", f"{summary['episodes']:,}"),
            ("seconds", (f"{summary['seconds']:.1f}  (checkpoints {summary['checkpoints']}, "
                         f"{summary['save_seconds']:.1f} s)")),
            ("MB/s", f"{summary['mb_per_s']}"),
            ("nodes / contexts / edges",
             f"{summary['nodes']:,} / {summary['contexts']:,} / {summary['edges']:,}"),
            ("hierarchy levels", f"{summary['hierarchy_levels']} ({summary['hierarchy_nodes']:,} nodes)"),
            ("categories", f"{summary['categories']:,} ({summary['categorized_nodes']:,} nodes)"),
            ("graph memory", f"{summary['memory_bytes'] / 1e6:.1f} MB of {summary['max_memory'] / 1e6:.1f} MB"),
            ("peak RSS", f"{summary['peak_rss_bytes'] / 1e6:.1f} MB"),
            ("prunes", f"{summary['prunes']} ({summary['pruned_edges']:,} edges)"),
        ]
        if "bits_per_byte" in summary:
            rows.append(("held-out bits/byte", (f"{summary['bits_per_byte']}  "
                                                f"({summary['eval_bytes']:,} bytes scored in "
                                                f"{summary['eval_seconds']:.1f} s)")))
        if summary["skipped_inputs"]:
            rows.append(("skipped inputs", str(len(summary["skipped_inputs"]))))
        if summary["failed_episodes"]:
            rows.append(("failed episodes", str(summary["failed_episodes"])))
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:>{width}}: {v}")


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    handler = _TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler], force=True)
    from melvin.distributed import run_from_args, wants_distributed

    if wants_distributed(args):
        return run_from_args(args)
    try:
        return Trainer(args).run()
    except (MelvinError, OSError, ValueError) as exc:
        print(f"melvin train: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
