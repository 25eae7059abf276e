#!/usr/bin/env python3
"""Kill -9 a training run at random moments, resume it each time, and compare the final brain with
an uninterrupted run's (sha256).

    python tools/kill_resume.py                     # ~/.cache/melvin-corpus/big.txt, 5 kills
    python tools/kill_resume.py big.txt --kills 5 --seed 7 --checkpoint-every 16M --max-memory 1G

Both runs use the same tools/train.py flags (the checkpoint schedule is part of what makes a run
deterministic). The interrupted run is started with --resume after every kill; each kill comes a
random delay (uniform in [--min-delay, --max-delay] seconds, default max: half the uninterrupted
run's time) after its start, so it lands anywhere: while loading the checkpoint, while training,
or while a checkpoint is being written. Exits 1 if the brains differ.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.expanduser("~/.cache/melvin-corpus")


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train_cmd(args, out: str, resume: bool) -> list[str]:
    cmd = [sys.executable, os.path.join(HERE, "train.py"), *args.inputs, "--out", out, "--quiet",
           "--json", "--max-memory", args.max_memory, "--checkpoint-every", args.checkpoint_every]
    return cmd + (["--resume"] if resume else [])


def position(out: str) -> str:
    try:
        with open(out + ".manifest.json") as f:
            pos = json.load(f).get("position")
    except (OSError, ValueError):
        return "none"
    return "none" if not pos else f"{pos.get('bytes', '?')} bytes"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", default=[os.path.join(CACHE, "big.txt")])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-memory", default="1G")
    ap.add_argument("--checkpoint-every", default="16M")
    ap.add_argument("--min-delay", type=float, default=2.0)
    ap.add_argument("--max-delay", type=float, default=None)
    ap.add_argument("--workdir", default=None, help="keep the brains here (default: a temp dir)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or tmp
        os.makedirs(work, exist_ok=True)
        ref, cut = os.path.join(work, "reference.mlv"), os.path.join(work, "interrupted.mlv")
        for path in (ref, cut):
            for p in (path, path + ".manifest.json"):
                if os.path.exists(p):
                    os.unlink(p)

        t0 = time.monotonic()
        done = subprocess.run(train_cmd(args, ref, False), capture_output=True, text=True)
        ref_seconds = time.monotonic() - t0
        if done.returncode != 0:
            sys.exit(f"kill_resume: the uninterrupted run failed:\n{done.stderr}")
        summary = json.loads(done.stdout)
        print(f"uninterrupted: {ref_seconds:.1f} s, {summary['bytes']} bytes, "
              f"sha256 {sha256(ref)}", flush=True)

        rng = random.Random(args.seed)
        max_delay = args.max_delay or max(args.min_delay + 1, ref_seconds / 2)
        kills = 0
        for attempt in range(1, args.kills + 1):
            delay = rng.uniform(args.min_delay, max_delay)
            proc = subprocess.Popen(train_cmd(args, cut, os.path.exists(cut + ".manifest.json")),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                proc.wait(timeout=delay)
                print(f"run {attempt}: finished before its kill at {delay:.1f} s "
                      f"(rc {proc.returncode})", flush=True)
                if proc.returncode != 0:
                    sys.exit(f"kill_resume: run {attempt} failed:\n{proc.stderr.read()}")
                break
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                print(f"kill {kills}: SIGKILL after {delay:.1f} s; checkpoint now at "
                      f"{position(cut)}", flush=True)
        final = subprocess.run(train_cmd(args, cut, os.path.exists(cut + ".manifest.json")),
                               capture_output=True, text=True)
        if final.returncode != 0:
            sys.exit(f"kill_resume: the final resume failed:\n{final.stderr}")
        a, b = sha256(ref), sha256(cut)
        print(f"after {kills} kills and resumes: sha256 {b}")
        print("byte-identical" if a == b else "DIFFERENT from the uninterrupted brain")
        return 0 if a == b else 1


if __name__ == "__main__":
    sys.exit(main())
