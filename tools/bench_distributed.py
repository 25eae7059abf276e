#!/usr/bin/env python3
"""Distributed training vs single-process: end-to-end seconds, speedup and held-out bits per byte.

    python tools/bench_distributed.py                          # the 88 MB corpus: single, 1 and 2 workers
    python tools/bench_distributed.py --limit-bytes 16M        # a 16 MB prefix (a busy machine)
    python tools/bench_distributed.py --workers 1,2 --shards 2 # the same shard plan for every run
    python tools/bench_distributed.py --graph-memory 240M --repeat 5  # median speedup of 5 rounds

Each configuration runs in a fresh process: "single" feeds every episode into one Graph in this
process (what tools/train.py does, without its checkpoints) and saves it; "N workers" runs
melvin.distributed.train_distributed on a LocalCluster of N worker processes that it starts (its
seconds include starting the cluster; `cluster s` shows how much). By default the shard plan is
the library's (one shard per worker, with a vocabulary sample when there are several), so 1 worker
trains one shard and merges nothing; --shards N gives every distributed run the same plan (and
the same brain). Bits per byte are scored on the first --eval-bytes (1 MB) of the held-out file as
tools/bench.py does (every line an episode, newlines counted). Speedups are against the 1-worker
run and against single-process.

Timing is only meaningful on an otherwise idle machine: the 1-minute load average is printed
before and after; with --max-load L the full corpus is refused above L (use --limit-bytes).
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's idle BLAS threads steal a core here

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CACHE = os.path.expanduser("~/.cache/melvin-corpus")


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run_one(cfg: dict) -> dict:
    """One configuration, in this (fresh) process."""
    import melvin
    from melvin.distributed import heldout_bits, plan_shards, shard_episodes, train_distributed

    limits = melvin.Limits(max_memory=cfg["graph_memory"])
    out = cfg["out"]
    t0 = time.perf_counter()
    if cfg["mode"] == "single":
        plan = plan_shards([cfg["corpus"]], shards=1, limit_bytes=cfg["limit_bytes"], vocab_bytes=0)
        g = melvin.Graph(limits)
        feed = g.feed
        for episode in shard_episodes(plan.shards[0]):
            feed(episode)
        g.save(out)
        seconds = time.perf_counter() - t0
        res = {"mode": "single", "bytes": plan.nbytes, "seconds": round(seconds, 3),
               "cluster_seconds": 0.0, "shards": 1, "merges": 0}
        del g
    else:
        s = train_distributed([cfg["corpus"]], out, limits=limits, workers=cfg["workers"],
                              shards=cfg["shards"], limit_bytes=cfg["limit_bytes"],
                              ship=cfg["ship"], vocab_bytes=cfg["vocab_bytes"],
                              final_memory=cfg["final_memory"])
        seconds = time.perf_counter() - t0
        res = {"mode": f"{cfg['workers']} workers", "bytes": s["bytes"],
               "seconds": round(seconds, 3), "cluster_seconds": s["cluster_seconds"],
               "shards": s["shards"], "merges": s["merges"],
               "vocab_sample_seconds": s["vocab_sample_seconds"],
               "shard_task_seconds": s["shard_task_seconds"],
               "merge_task_seconds": s["merge_task_seconds"],
               "root_merge_seconds": s["root_merge_seconds"], "dashboard_link": s["dashboard_link"]}
    if cfg.get("score", True):
        g = melvin.load(out)
        st = g.stats()
        res.update(nodes=st["nodes"], edges=st["edges"], memory_bytes=st["memory_bytes"],
                   prunes=st["prunes"], brain_bytes=os.path.getsize(out))
        t1 = time.perf_counter()
        bits, nbytes = heldout_bits(g, cfg["heldout"], cfg["eval_bytes"])
        res.update(bits_per_byte=round(bits / nbytes, 4), eval_bytes=nbytes,
                   eval_seconds=round(time.perf_counter() - t1, 3))
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    res["peak_worker_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    with open(out, "rb") as f:
        import hashlib
        res["sha256"] = hashlib.sha256(f.read()).hexdigest()[:16]
    os.unlink(out)
    return res


def _size(text):
    from melvin.limits import parse_size
    return parse_size(int(text) if text.strip().isdigit() else text, "size")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", nargs="?", default=os.path.join(CACHE, "big.txt"))
    ap.add_argument("--heldout", default=os.path.join(CACHE, "heldout.txt"))
    ap.add_argument("--eval-bytes", type=_size, default=1 << 20)
    ap.add_argument("--limit-bytes", type=_size, default=None, help="train on a prefix only")
    ap.add_argument("--graph-memory", default="2G", help="Limits.max_memory of every graph")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--shards", type=int, default=None,
                    help="the same shard plan for every distributed run (default: the library's)")
    ap.add_argument("--vocab-bytes", type=_size, default=None,
                    help="vocabulary sample size (default the library's; 0 = none)")
    ap.add_argument("--ship", choices=("file", "bytes"), default="file")
    ap.add_argument("--final-memory", default=None,
                    help="max_memory of the last merge's brain (default --graph-memory; "
                         "tools/train.py --workers gives it a single process's graph budget)")
    ap.add_argument("--no-single", action="store_true", help="skip the single-process reference")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the distributed configurations N times, alternating, and report "
                         "each round's speedup over 1 worker and their median (this machine's "
                         "speed drifts by 10%% within minutes; the brains are scored once)")
    ap.add_argument("--max-load", type=float, default=None,
                    help="refuse the full corpus when the 1-minute load average is above this")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(run_one(json.loads(args.one))))
        return 0

    load0 = loadavg()
    if args.max_load is not None and args.limit_bytes is None and load0 > args.max_load:
        print(f"load average {load0} > {args.max_load}: timing would be distorted; rerun later or "
              f"with --limit-bytes 16M", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="bench-distributed-")
    base = dict(corpus=os.path.abspath(args.corpus), heldout=os.path.abspath(args.heldout),
                eval_bytes=args.eval_bytes, limit_bytes=args.limit_bytes,
                graph_memory=args.graph_memory, shards=args.shards, ship=args.ship,
                vocab_bytes=args.vocab_bytes, final_memory=args.final_memory)
    configs = [] if args.no_single else [dict(base, mode="single", out=os.path.join(tmp, "single.mlv"))]
    for w in [int(x) for x in args.workers.split(",") if x.strip()]:
        configs.append(dict(base, mode="distributed", workers=w,
                            out=os.path.join(tmp, f"w{w}.mlv")))
    size = os.path.getsize(args.corpus)
    print(f"# corpus {args.corpus} ({size / 1e6:.1f} MB), training on "
          f"{'all of it' if args.limit_bytes is None else f'the first {args.limit_bytes / 1e6:.1f} MB'}; "
          f"held-out {args.heldout} first {args.eval_bytes / 1e6:.1f} MB; graph memory "
          f"{args.graph_memory}; load average {load0} at start", file=sys.stderr)
    results, rounds = [], []

    def run(cfg):
        la = loadavg()
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", json.dumps(cfg)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            print(f"configuration {cfg['mode']} {cfg.get('workers', '')} failed", file=sys.stderr)
            return None
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["load_before"] = la
        print(f"# {res['mode']}: {res['seconds']} s, {res.get('bits_per_byte', '-')} bits/byte "
              f"(load {la})", file=sys.stderr)
        return res

    for cfg in configs:
        res = run(cfg)
        if res is None:
            return 1
        results.append(res)
    dist = [c for c in configs if c["mode"] == "distributed"]
    for k in range(1, max(1, args.repeat)):
        times = {}
        for cfg in (dist if k % 2 == 0 else dist[::-1]):      # alternate the order
            res = run(dict(cfg, score=False))
            if res is None:
                return 1
            times[res["mode"]] = res["seconds"]
        rounds.append(times)
    os.rmdir(tmp)
    by = {r["mode"]: r for r in results}
    one = by.get("1 workers")
    single = by.get("single")
    for r in results:
        if one and r is not one and r["mode"] != "single":
            r["speedup_vs_1_worker"] = round(one["seconds"] / r["seconds"], 3)
        if single and r is not single:
            r["speedup_vs_single"] = round(single["seconds"] / r["seconds"], 3)
            r["bpb_vs_single"] = round(r["bits_per_byte"] / single["bits_per_byte"] - 1, 4)
    rounds.insert(0, {r["mode"]: r["seconds"] for r in results if r["mode"] != "single"})
    ratios = {}
    for r in results:
        if one and r is not one and r["mode"] != "single":
            ratios[r["mode"]] = sorted(t["1 workers"] / t[r["mode"]] for t in rounds)
    summary = {"corpus": args.corpus, "limit_bytes": args.limit_bytes, "load_start": load0,
               "load_end": loadavg(), "results": results, "rounds": rounds,
               "speedup_vs_1_worker_per_round": ratios,
               "median_speedup_vs_1_worker": {m: statistics.median(v) for m, v in ratios.items()}}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{'run':>10} {'MB':>7} {'seconds':>8} {'cluster s':>9} {'shards':>6} {'merge s':>8} "
          f"{'speedup/1w':>10} {'speedup/single':>14} {'bits/byte':>9} {'vs single':>9} "
          f"{'load':>5}")
    for r in results:
        vs = "" if "bpb_vs_single" not in r else f"{100 * r['bpb_vs_single']:+.1f}%"
        print(f"{r['mode']:>10} {r['bytes'] / 1e6:7.1f} {r['seconds']:8.1f} "
              f"{r['cluster_seconds']:9.1f} {r['shards']:6} {r.get('merge_task_seconds', 0):8.1f} "
              f"{r.get('speedup_vs_1_worker', ''):>10} {r.get('speedup_vs_single', ''):>14} "
              f"{r['bits_per_byte']:9.4f} "
              f"{vs:>9} "
              f"{r['load_before']:5.2f}")
    if len(rounds) > 1:
        for mode, v in ratios.items():
            print(f"{mode} over 1 worker in {len(v)} rounds: "
                  f"{', '.join(f'{x:.3f}' for x in v)}; median "
                  f"{summary['median_speedup_vs_1_worker'][mode]:.3f}")
    print(f"load average: {load0} at start, {summary['load_end']} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
