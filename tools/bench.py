#!/usr/bin/env python3
"""Training throughput, memory and held-out bits per byte on one corpus.

    python tools/bench.py ../shared/corpus/wiki_train.txt --heldout ../shared/corpus/wiki_heldout.txt

Each line is one episode (fed without its newline; the learned STOP stands for it). Bits per byte
on the held-out file sum every line's code length, STOP included, over all its bytes, newlines
included. Reports MB/s of the feed loop alone (median of --repeat fresh runs), peak RSS, and
memory_bytes per edge.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's idle BLAS threads steal a core here

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import melvin  # noqa: E402


def read_lines(path: str, limit: int | None = None) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read(limit) if limit else f.read()
    return data.split(b"\n")


def heldout_bpb(g: melvin.Graph, lines: list[bytes]) -> float:
    bits = sum(g.score_bits(line) for line in lines)
    nbytes = sum(len(line) + 1 for line in lines)
    return bits / nbytes


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train")
    ap.add_argument("--heldout")
    ap.add_argument("--limit", type=int, help="train on the first N bytes only")
    ap.add_argument("--max-memory", default="4G")
    ap.add_argument("--context-len", type=int, default=melvin.Limits.context_len)
    ap.add_argument("--min-count", type=int, default=melvin.Limits.hierarchy_min_count)
    ap.add_argument("--max-payload", type=int, default=melvin.Limits.max_payload)
    ap.add_argument("--repeat", type=int, default=5,
                    help="train this many fresh graphs; MB/s is the median (a short run is noisy)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    limits = melvin.Limits(max_memory=args.max_memory, context_len=args.context_len,
                           hierarchy_min_count=args.min_count, max_payload=args.max_payload)
    lines = read_lines(args.train, args.limit)
    nbytes = sum(len(x) + 1 for x in lines)
    times = []
    for _ in range(args.repeat):
        g = melvin.Graph(limits)
        t0 = time.perf_counter()
        for line in lines:
            g.feed(line)
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    s = g.stats()
    out = dict(corpus=args.train, bytes=nbytes, seconds=round(dt, 3), mb_per_s=round(nbytes / dt / 1e6, 3),
               mb_per_s_best=round(nbytes / min(times) / 1e6, 3), runs=args.repeat,
               nodes=s["nodes"], contexts=s["contexts"], edges=s["edges"],
               hierarchy_levels=s["hierarchy_levels"], memory_bytes=s["memory_bytes"],
               bytes_per_edge=round(s["bytes_per_edge"], 2), peak_rss_mb=round(peak_rss_mb(), 1),
               prunes=s["prunes"])
    if args.heldout:
        t1 = time.perf_counter()
        out["heldout_bpb"] = round(heldout_bpb(g, read_lines(args.heldout)), 4)
        out["score_seconds"] = round(time.perf_counter() - t1, 3)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>18}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
