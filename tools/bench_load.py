#!/usr/bin/env python3
"""How long a saved brain takes to load and to answer its first query.

    python tools/bench_load.py brain.mlv [more.mlv ...] [--repeat 3] [--mapped DIR] [--json]

Each load runs in a fresh subprocess (the file is read once beforehand, so it is in the page
cache: this measures melvin, not the disk), with and without the final consistency check
(melvin.load(path, verify=...)). Reports the file size, the graph it becomes (memory_bytes, edges),
the median load time, the time of the first predict() after it, then of a generate() of up to
64 bytes, and the subprocess's peak RSS. --mapped DIR also saves each brain in format 4
(Graph.save(mapped=True), used in place by load) into DIR and times it the same way, the runs of
both formats interleaved (this machine's speed drifts from minute to minute).
A brain to try it on: python tools/train.py big.txt --out big.mlv --max-memory 4G
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's idle BLAS threads steal a core here

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import melvin
t = time.perf_counter()
g = melvin.load(sys.argv[2], verify=sys.argv[3] == "1")
loaded = time.perf_counter()
g.predict(b"The ", k=5)
answered = time.perf_counter()
g.generate(b"The history of the ", max_bytes=64)
generated = time.perf_counter()
st = g.stats()
print(json.dumps(dict(load_s=loaded - t, first_query_s=answered - loaded,
                      generate_s=generated - answered,
                      memory_bytes=st["memory_bytes"], edges=st["edges"],
                      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def measure(path: str, verify: bool) -> dict:
    run = subprocess.run([sys.executable, "-c", _CHILD, ROOT, path, "1" if verify else "0"],
                         capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise SystemExit(f"loading {path} failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout)


def mapped_copy(path: str, directory: str) -> str:
    """path saved in format 4 into directory (kept while newer than path), by a subprocess: a
    child's peak RSS starts from its parent's at fork."""
    os.makedirs(directory, exist_ok=True)
    out = os.path.join(directory, os.path.splitext(os.path.basename(path))[0] + ".v4.mlv")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(path):
        code = ("import sys; sys.path.insert(0, sys.argv[1]); import melvin; "
                "melvin.load(sys.argv[2]).save(sys.argv[3], mapped=True)")
        subprocess.run([sys.executable, "-c", code, ROOT, path, out], check=True)
    return out


def row(path: str, verify: bool, runs: list) -> dict:
    return dict(brain=path, file_mb=os.path.getsize(path) / 1e6, verify=verify,
                graph_mb=runs[0]["memory_bytes"] / 1e6, edges=runs[0]["edges"],
                load_s=statistics.median(r["load_s"] for r in runs),
                first_query_s=statistics.median(r["first_query_s"] for r in runs),
                generate_s=statistics.median(r["generate_s"] for r in runs),
                peak_rss_mb=max(r["peak_rss_mb"] for r in runs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("brains", nargs="+")
    ap.add_argument("--repeat", type=int, default=3, help="loads per setting (median reported)")
    ap.add_argument("--mapped", metavar="DIR",
                    help="also time each brain saved in format 4 (written into DIR)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    rows = []
    for original in args.brains:
        paths = [original]
        if args.mapped:
            paths.append(mapped_copy(original, args.mapped))
        for path in paths:
            with open(path, "rb") as f:               # warm the page cache
                while f.read(1 << 24):
                    pass
        for verify in (True, False):
            runs = {path: [] for path in paths}
            for _ in range(args.repeat):
                for path in paths:
                    runs[path].append(measure(path, verify))
            rows.extend(row(path, verify, runs[path]) for path in paths)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'brain':30} {'file MB':>8} {'graph MB':>9} {'edges':>11} {'verify':>6} "
          f"{'load s':>7} {'1st query s':>11} {'generate s':>10} {'peak RSS MB':>11}")
    for r in rows:
        print(f"{os.path.basename(r['brain'])[:30]:30} {r['file_mb']:8.1f} {r['graph_mb']:9.1f} "
              f"{r['edges']:11,} {str(r['verify']):>6} {r['load_s']:7.2f} "
              f"{r['first_query_s']:11.3f} {r['generate_s']:10.3f} {r['peak_rss_mb']:11.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
