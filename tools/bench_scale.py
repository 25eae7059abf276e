#!/usr/bin/env python3
"""Training speed, peak RSS, graph size and held-out bits per byte against corpus size.

    python tools/bench_scale.py                          # ~/.cache/melvin-corpus/big.txt, heldout.txt
    python tools/bench_scale.py big.txt --heldout held.txt --prefixes 1M,4M,16M --eval-bytes 2M
    python tools/bench_scale.py --bytewise --prefixes 1M,4M,16M   # without hierarchy

Each prefix (1, 4, 16, 64 MB and the full file, by default) is trained by tools/train.py in a fresh
subprocess, so the peak RSS reported is that run's own (training, its final save and the held-out
scoring). Each line is one episode, as in tools/bench.py; a prefix ends at the first line end at or
past its size. Only the first --eval-bytes (1 MB) of the held-out file are scored by default, since
scoring is slower than training; bits per byte follow tools/bench.py (all bytes, newlines
included). MB/s is the training loop's (reading and feeding), without the final save and scoring.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's idle BLAS threads steal a core here

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from melvin.limits import parse_size  # noqa: E402

CACHE = os.path.expanduser("~/.cache/melvin-corpus")


def run_prefix(corpus: str, prefix: int | None, args, workdir: str) -> dict:
    out = os.path.join(workdir, "brain.mlv")
    cmd = [sys.executable, os.path.join(HERE, "train.py"), corpus, "--out", out, "--json", "--quiet",
           "--checkpoint-every", "0", "--max-memory", args.max_memory]
    if args.graph_memory:
        cmd += ["--graph-memory", args.graph_memory]
    if args.bytewise:
        cmd.append("--bytewise")
    if prefix is not None:
        cmd += ["--limit-bytes", str(prefix)]
    if args.heldout:
        cmd += ["--eval", args.heldout]
        if args.eval_bytes:
            cmd += ["--eval-bytes", str(args.eval_bytes)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for path in (out, out + ".manifest.json"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if p.returncode != 0:
        raise SystemExit(f"bench_scale: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    return json.loads(p.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", nargs="?", default=os.path.join(CACHE, "big.txt"))
    ap.add_argument("--heldout", default=os.path.join(CACHE, "heldout.txt"),
                    help="held-out text to score ('' to skip scoring)")
    ap.add_argument("--eval-bytes", default="1M",
                    help="score only the first N bytes of the held-out file (0 = all of it)")
    ap.add_argument("--prefixes", default="1M,4M,16M,64M,full",
                    help="comma-separated sizes (1M = 2^20 bytes) and 'full'")
    ap.add_argument("--max-memory", default="4G", help="process budget passed to train.py")
    ap.add_argument("--graph-memory", help="graph budget passed to train.py (overrides the derivation)")
    ap.add_argument("--json", action="store_true", help="one JSON object per prefix instead of a table")
    ap.add_argument("--bytewise", action="store_true", help="train without hierarchy (train.py --bytewise)")
    args = ap.parse_args(argv)

    if not os.path.exists(args.corpus):
        ap.error(f"corpus {args.corpus} not found")
    if args.heldout and not os.path.exists(args.heldout):
        ap.error(f"held-out file {args.heldout} not found (pass --heldout '' to skip scoring)")
    args.eval_bytes = 0 if str(args.eval_bytes).strip() == "0" else parse_size(args.eval_bytes, "--eval-bytes")
    size = os.path.getsize(args.corpus)
    prefixes: list[int | None] = []
    for item in args.prefixes.split(","):
        item = item.strip()
        if item == "full":
            prefixes.append(None)
            continue
        n = parse_size(item, "--prefixes")
        if n >= size:
            print(f"# skipping prefix {item}: the corpus has only {size} bytes", file=sys.stderr)
            continue
        prefixes.append(n)

    header = (f"{'prefix':>10} {'MB':>8} {'seconds':>9} {'MB/s':>7} {'peak RSS MB':>12} "
              f"{'graph MB':>9} {'nodes':>10} {'edges':>11} {'prunes':>7} {'bits/byte':>10} "
              f"{'score s':>8}")
    if not args.json:
        print(f"# corpus {args.corpus} ({size / 1e6:.1f} MB); held-out "
              f"{args.heldout or '-'} (first {args.eval_bytes or 'all'} bytes); "
              f"--max-memory {args.max_memory}{' --bytewise' if args.bytewise else ''}")
        print(header)
    with tempfile.TemporaryDirectory(prefix="melvin-bench-") as workdir:
        for prefix in prefixes:
            r = run_prefix(args.corpus, prefix, args, workdir)
            label = "full" if prefix is None else f"{prefix >> 20}M"
            r["prefix"] = label
            if args.json:
                print(json.dumps(r, sort_keys=True), flush=True)
                continue
            bpb = r.get("bits_per_byte")
            print(f"{label:>10} {r['bytes'] / 1e6:8.1f} {r['seconds']:9.1f} {r['mb_per_s']:7.2f} "
                  f"{r['peak_rss_bytes'] / 1e6:12.1f} {r['memory_bytes'] / 1e6:9.1f} {r['nodes']:10,} "
                  f"{r['edges']:11,} {r['prunes']:7} {bpb if bpb is not None else '-':>10} "
                  f"{r.get('eval_seconds', 0):8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
