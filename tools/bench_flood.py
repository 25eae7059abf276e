#!/usr/bin/env python3
"""Training speed on text crafted to flood an index (hash flooding), against plain text.

    python tools/bench_flood.py [--words 40000] [--index trie|node] [--reps 6] [--json]

Index slots are placed by unkeyed hashes of the bytes (DESIGN's determinism: the same text gives
the same brain), so text can choose them. The crafted text is random lowercase words (with a
leading space, as words in prose) kept only if the key of the pattern each would become starts
its probe in the first eighth of the index; the plain text is as many words of the same length
kept only if it does not. Each word occurs --reps times, shuffled, 12 words to a line, so both
texts have the same size and the same number of patterns to learn. Loading refuses brains whose
indexes are crowded (README, "Crowded indexes"); training has no such guard, and this measures
what that costs: once the crafted patterns share a run of slots, every probe that lands in the
run walks it.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's idle BLAS threads steal a core here

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import melvin  # noqa: E402
from melvin._core.store import _pattern_keys  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def word_sets(n: int, length: int, index: str, seed: int) -> tuple[list[bytes], list[bytes]]:
    """n crafted words (the pattern's key in the first eighth: below 2**61) and n plain ones."""
    which = 0 if index == "node" else 1
    rng = random.Random(seed)
    crafted, plain, seen = [], [], set()
    if 8 * n > len(LETTERS) ** length * 7 // 8:
        raise SystemExit(f"--words {n}: too many for {length} letters (an eighth of the "
                         f"{len(LETTERS) ** length:,} words at most, with room to find them)")
    while len(crafted) < n or len(plain) < n:
        word = (" " + "".join(rng.choice(LETTERS) for _ in range(length))).encode()
        if word in seen:
            continue
        seen.add(word)
        bucket = crafted if _pattern_keys(word)[which] >> 61 == 0 else plain
        if len(bucket) < n:
            bucket.append(word)
    return crafted, plain


def text(words: list[bytes], reps: int, seed: int) -> list[bytes]:
    seq = words * reps
    random.Random(seed).shuffle(seq)
    return [b"".join(seq[i:i + 12]).strip() for i in range(0, len(seq), 12)]


def train(lines: list[bytes]) -> dict:
    g = melvin.Graph(melvin.Limits(max_memory="1G"), seed=1)
    start = time.perf_counter()
    for line in lines:
        g.feed(line)
    seconds = time.perf_counter() - start
    size = sum(map(len, lines))
    st = g.stats()
    return dict(bytes=size, seconds=round(seconds, 3), mb_per_s=round(size / seconds / 1e6, 3),
                nodes=st["nodes"], hierarchy_nodes=st["hierarchy_nodes"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--words", type=int, default=40000, help="distinct words of each text")
    ap.add_argument("--length", type=int, default=4, help="letters per word (after its space)")
    ap.add_argument("--reps", type=int, default=6, help="occurrences of each word")
    ap.add_argument("--index", choices=("trie", "node"), default="trie",
                    help="the index the crafted words aim at (the trie is walked at every token)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    crafted, plain = word_sets(args.words, args.length, args.index, args.seed)
    runs = {}
    for name, words in (("plain", plain), ("crafted", crafted)):
        runs[name] = train(text(words, args.reps, args.seed))
    slowdown = round(runs["crafted"]["seconds"] / runs["plain"]["seconds"], 2)
    if args.json:
        print(json.dumps(dict(index=args.index, words=args.words, runs=runs, slowdown=slowdown)))
        return 0
    print(f"# {args.words} words of {args.length} letters, {args.reps} times each, "
          f"crafted to crowd the {args.index} index")
    print(f"{'text':>8} {'MB':>6} {'seconds':>8} {'MB/s':>7} {'patterns':>9}")
    for name, r in runs.items():
        print(f"{name:>8} {r['bytes'] / 1e6:6.2f} {r['seconds']:8.2f} {r['mb_per_s']:7.3f} "
              f"{r['hierarchy_nodes']:9,}")
    print(f"crafted text trains {slowdown}x slower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
