#!/usr/bin/env python3
"""Memory profile of training on growing prefixes of a corpus, under memray with native traces.

    python tools/profile_memory.py CORPUS --out DIR [--max-memory SIZE] [--check]

Sizes are in MiB (2**20 bytes) throughout. For each prefix of 1, 2, 4, ... MiB of CORPUS (and the whole corpus), a worker subprocess trains a
fresh graph on the prefix, one line per episode, under `memray run --native`; once with the
default limits ("uncapped": Limits().max_memory, 25% of RAM) and once under --max-memory
("capped"). --max-memory is the budget of the whole process's heap, as in tools/train.py: the
graph's max_memory is that minus RESERVE (16 MiB) for what the process holds besides the graph
(the interpreter, numpy and the extension modules, the 1 MiB read buffer, the current line:
measured at 7-8 MiB and constant in the corpus size). The worker streams the file, so what grows
is the graph.

Writes to DIR:
    profile.tsv, profile.md  one row per run: config, bytes fed, peak heap (memray's high-water
                             mark of every malloc and Python allocation, from the FileReader API),
                             peak RSS, graph memory_bytes, nodes, edges, bytes per edge
    profile.png              peak heap and graph memory vs bytes fed, capped and uncapped, with
                             the cap marked
    flamegraph.html          memray flamegraph of the largest capped run (uncapped if no cap)
    run-*.bin, run-*.json    memray captures and the workers' own numbers

--check exits 1 if any capped run's peak heap exceeds --max-memory. A peak heap that tracks the
corpus size is what it exists to catch.

Requires memray and matplotlib (`pip install 'melvin[profile]'`). Python 3.10+, Linux.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MB = 1 << 20
RESERVE = 16 * MB


def _worker(args) -> int:
    """Train on the first args.bytes bytes of the corpus; write the numbers as JSON."""
    import melvin

    from melvin.limits import parse_size

    if args.max_memory:
        budget = parse_size(args.max_memory, "--max-memory")
        if budget < 2 * RESERVE:
            raise SystemExit(f"--max-memory must be at least {2 * RESERVE // MB} MiB")
        lim = melvin.Limits(max_memory=budget - RESERVE)
    else:
        lim = melvin.Limits()
    g = melvin.Graph(lim)
    fed = 0
    t0 = time.perf_counter()
    with open(args.corpus, "rb", buffering=MB) as f:
        while fed < args.bytes:
            line = f.readline(min(args.bytes - fed, 64 * MB))
            if not line:
                break
            fed += len(line)
            if line.endswith(b"\n"):
                line = line[:-1]
            if line:
                g.feed(line)
    elapsed = time.perf_counter() - t0
    s = g.stats()
    out = dict(bytes_fed=fed, seconds=elapsed, max_memory=lim.max_memory,
               memory_bytes=s["memory_bytes"], peak_memory_bytes=s["peak_memory_bytes"],
               nodes=s["nodes"], contexts=s["contexts"], edges=s["edges"], prunes=s["prunes"],
               bytes_per_edge=s["bytes_per_edge"],
               rss_peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    with open(args.result, "w") as f:
        json.dump(out, f)
    return 0


def _prefixes(size: int, limit: int | None) -> list[int]:
    top = min(size, limit) if limit else size
    out, n = [], MB
    while n < top:
        out.append(n)
        n *= 2
    out.append(top)
    return out


def _run(args, config: str, max_memory: str | None, nbytes: int) -> dict:
    tag = f"run-{config}-{nbytes // MB if nbytes % MB == 0 else nbytes}"
    bin_path = os.path.join(args.out, tag + ".bin")
    json_path = os.path.join(args.out, tag + ".json")
    for p in (bin_path, json_path):
        if os.path.exists(p):
            os.unlink(p)
    cmd = [sys.executable, "-m", "memray", "run", "--native", "-q", "-o", bin_path,
           os.path.abspath(__file__), "--worker", args.corpus, "--bytes", str(nbytes),
           "--result", json_path]
    if max_memory:
        cmd += ["--max-memory", max_memory]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    with open(json_path) as f:
        row = json.load(f)
    from memray import FileReader

    reader = FileReader(bin_path)
    row.update(config=config, peak_heap=reader.metadata.peak_memory,
               total_allocations=reader.metadata.total_allocations, bin=bin_path,
               wall=time.perf_counter() - t0)
    reader.close()
    print(f"{config:9s} {row['bytes_fed'] / MB:8.1f} MiB fed  peak heap {row['peak_heap'] / MB:8.1f} MiB"
          f"  graph {row['memory_bytes'] / MB:8.1f} MiB  rss {row['rss_peak'] / MB:8.1f} MiB"
          f"  edges {row['edges']:>10,}  ({row['wall']:.0f} s)", flush=True)
    return row


COLUMNS = ("config", "bytes_fed", "peak_heap", "rss_peak", "memory_bytes", "nodes", "edges",
           "bytes_per_edge", "prunes", "seconds")


def _write_tables(rows, out, cap):
    with open(os.path.join(out, "profile.tsv"), "w") as f:
        f.write("\t".join(COLUMNS) + "\n")
        for r in rows:
            f.write("\t".join(str(r[c]) if c != "bytes_per_edge" or r[c] is None
                              else f"{r[c]:.2f}" for c in COLUMNS) + "\n")
    with open(os.path.join(out, "profile.md"), "w") as f:
        f.write(f"Training on growing prefixes; capped runs: heap budget {cap / MB:.0f} MiB, graph "
                f"max_memory {(cap - RESERVE) / MB:.0f} MiB.\n\n"
                if cap else "Training on growing prefixes.\n\n")
        f.write("| config | MiB fed | peak heap (MiB) | peak RSS (MiB) | graph memory (MiB) | nodes | "
                "edges | bytes/edge | prunes | train s |\n")
        f.write("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
        for r in rows:
            bpe = f"{r['bytes_per_edge']:.1f}" if r["bytes_per_edge"] else "-"
            f.write(f"| {r['config']} | {r['bytes_fed'] / MB:.1f} | {r['peak_heap'] / MB:.1f} | "
                    f"{r['rss_peak'] / MB:.1f} | {r['memory_bytes'] / MB:.1f} | {r['nodes']:,} | "
                    f"{r['edges']:,} | {bpe} | {r['prunes']} | {r['seconds']:.1f} |\n")


def _plot(rows, out, cap):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"uncapped": ("tab:red", "uncapped"), "capped": ("tab:blue", "capped")}
    for config, (color, label) in styles.items():
        rs = [r for r in rows if r["config"] == config]
        if not rs:
            continue
        x = [r["bytes_fed"] / MB for r in rs]
        ax.plot(x, [r["peak_heap"] / MB for r in rs], "o-", color=color,
                label=f"{label}: peak heap (memray)")
        ax.plot(x, [r["memory_bytes"] / MB for r in rs], "s--", color=color, alpha=0.6,
                label=f"{label}: graph memory_bytes")
    if cap:
        ax.axhline(cap / MB, color="black", linestyle=":",
                   label=f"--max-memory {cap / MB:.0f} MiB (heap budget, --check)")
        ax.axhline((cap - RESERVE) / MB, color="gray", linestyle=":", linewidth=0.8,
                   label=f"graph max_memory {(cap - RESERVE) / MB:.0f} MiB")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes fed (MiB)")
    ax.set_ylabel("MiB")
    ax.set_title("melvin training memory vs corpus prefix")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "profile.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus")
    ap.add_argument("--out", help="output directory")
    ap.add_argument("--max-memory", help='cap for the capped runs, e.g. "256M"')
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if a capped run's peak heap exceeds --max-memory")
    ap.add_argument("--up-to", type=float, help="largest prefix in MiB (default: the whole corpus)")
    ap.add_argument("--no-uncapped", action="store_true", help="skip the uncapped runs")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)
    if not args.out:
        ap.error("--out is required")
    if args.check and not args.max_memory:
        ap.error("--check needs --max-memory")
    try:
        import matplotlib  # noqa: F401
        import memray  # noqa: F401
    except ImportError as exc:
        print(f"profile_memory: {exc}; install the profile extra: pip install 'melvin[profile]'",
              file=sys.stderr)
        return 2
    from melvin.limits import parse_size

    cap = parse_size(args.max_memory, "--max-memory") if args.max_memory else None
    os.makedirs(args.out, exist_ok=True)
    size = os.path.getsize(args.corpus)
    prefixes = _prefixes(size, int(args.up_to * MB) if args.up_to else None)
    rows = []
    for n in prefixes:
        if cap:
            rows.append(_run(args, "capped", args.max_memory, n))
        if not args.no_uncapped:
            rows.append(_run(args, "uncapped", None, n))
        _write_tables(rows, args.out, cap)          # partial results survive an interruption
    plot = _plot(rows, args.out, cap)
    largest = max((r for r in rows if r["config"] == ("capped" if cap else "uncapped")),
                  key=lambda r: r["bytes_fed"])
    flame = os.path.join(args.out, "flamegraph.html")
    subprocess.run([sys.executable, "-m", "memray", "flamegraph", "-f", "-o", flame, largest["bin"]],
                   check=True, stdout=subprocess.DEVNULL)
    print(f"wrote {os.path.join(args.out, 'profile.tsv')}, profile.md, {plot}, {flame}")
    if args.check:
        over = [r for r in rows if r["config"] == "capped" and r["peak_heap"] > cap]
        for r in over:
            print(f"CHECK FAILED: {r['bytes_fed'] / MB:.1f} MiB fed: peak heap "
                  f"{r['peak_heap'] / MB:.1f} MiB > --max-memory {cap / MB:.0f} MiB", file=sys.stderr)
        if over:
            return 1
        peak = max((r["peak_heap"] for r in rows if r["config"] == "capped"), default=0)
        print(f"check passed: every capped run's peak heap <= {cap / MB:.0f} MiB "
              f"(highest {peak / MB:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
