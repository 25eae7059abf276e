"""Command line: `python -m melvin demo | stats | generate | convert | train`.

`python -m melvin train INPUT... --out brain.mlv` forwards everything after `train` to
melvin.train.main (see `python -m melvin train --help`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time


def _default_corpus() -> tuple[list[bytes], list[bytes]]:
    """The English reference text that ships with every CPython (pydoc_data), split 90/10 by topic."""
    from pydoc_data import topics

    names = sorted(topics.topics)
    held = set(names[::10])
    train, heldout = [], []
    for name in names:
        lines = topics.topics[name].encode("utf-8").split(b"\n")
        (heldout if name in held else train).extend(lines)
    return train, heldout


def _bpb(g, lines) -> float:
    return sum(g.score_bits(x) for x in lines) / sum(len(x) + 1 for x in lines)


def cmd_demo(args) -> int:
    import melvin

    train, heldout = _default_corpus()
    g = melvin.Graph(melvin.Limits(max_memory=args.max_memory))
    nbytes = sum(len(x) + 1 for x in train)
    t0 = time.perf_counter()
    for line in train:
        g.feed(line)
    dt = time.perf_counter() - t0
    s = g.stats()
    print(f"trained on {nbytes / 1e6:.2f} MB of CPython's pydoc topics in {dt:.2f} s "
          f"({nbytes / dt / 1e6:.2f} MB/s)")
    print(f"nodes {s['nodes']}  contexts {s['contexts']}  edges {s['edges']}  "
          f"hierarchy levels {s['hierarchy_levels']}")
    print(f"categories {s['categories']} ({s['embeddings']} patterns placed by their embeddings)")
    print(f"memory {s['memory_bytes'] / 1e6:.1f} MB ({s['bytes_per_edge']:.1f} B/edge)")
    print(f"held-out bits per byte: {_bpb(g, heldout):.3f}  (8.0 = no model)")
    for prompt in (b"The \"assert\" statement", b"The simple form, ", b"Assignment statements are",
                   b"A class definition"):
        out = g.generate(prompt, max_bytes=80)
        # every line is an episode: an empty continuation is a prediction that the line ends
        why = "" if out else "  (the most probable next step ends the line)"
        print(f"  {prompt.decode()!r} -> {out.decode('utf-8', 'replace')!r}{why}")
    if args.save:
        g.save(args.save)
        print(f"saved to {args.save}")
    return 0


def cmd_stats(args) -> int:
    import melvin

    g = melvin.load(args.brain)
    print(json.dumps(g.stats(), indent=2, sort_keys=True))
    return 0


def cmd_generate(args) -> int:
    import melvin

    g = melvin.load(args.brain)
    sys.stdout.buffer.write(g.generate(args.prompt.encode(), max_bytes=args.max_bytes) + b"\n")
    return 0


def cmd_convert(args) -> int:
    import melvin

    melvin.load(args.brain).save(args.out, mapped=args.mapped)
    return 0


def cmd_train(args) -> int:
    from melvin.train import main as train_main

    argv = list(args.train_argv)
    if args.log_level_given and not any(a == "--log-level" or a.startswith("--log-level=") for a in argv):
        argv += ["--log-level", args.log_level]
    return train_main(argv)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    argv = list(argv)
    if argv[:1] == ["train"]:
        # forwarded untouched, so `train --help` and train's own options work as they are
        from melvin.train import main as train_main

        return train_main(argv[1:])
    ap = argparse.ArgumentParser(prog="melvin", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log-level", default="WARNING")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="train on CPython's pydoc topics; show stats, bits/byte, generations")
    p.add_argument("--max-memory", default="1G")
    p.add_argument("--save", help="also save the brain here")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("stats", help="print a saved brain's stats")
    p.add_argument("brain")
    p.set_defaults(func=cmd_stats)
    p = sub.add_parser("generate", help="continue a prompt with a saved brain")
    p.add_argument("brain")
    p.add_argument("prompt")
    p.add_argument("--max-bytes", type=int, default=256)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("convert", help="rewrite a saved brain in format 4 (--mapped: used in place "
                                       "by load, ~2.3x larger) or the compact format 3")
    p.add_argument("brain")
    p.add_argument("out")
    p.add_argument("--mapped", action="store_true",
                   help="format 4 (default: the compact format, what training writes)")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("train", add_help=False,
                       help="train a brain on files, directories, stdin, compressed files or wiki "
                            "dumps in bounded memory (see `melvin train --help`)")
    p.add_argument("train_argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_train)
    args = ap.parse_args(argv)
    words = sys.argv[1:] if argv is None else list(argv)
    head = words[:words.index("train")] if "train" in words else words
    args.log_level_given = any(a == "--log-level" or a.startswith("--log-level=") for a in head)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - the CLI reports, the library raises
        from melvin.errors import MelvinError

        if isinstance(exc, (MelvinError, OSError)):
            print(f"melvin: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
