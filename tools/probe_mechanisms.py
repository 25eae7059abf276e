#!/usr/bin/env python3
"""Estimate, before building them, what two proposed mechanisms would add to held-out bits per byte.

    python tools/probe_mechanisms.py ../shared/corpus/wiki_train.txt --heldout ../shared/corpus/wiki_heldout.txt

Both probes train melvin on the training file, replay the training text in its final segmentation
(score_detail) to gather statistics in Python, and rescore a random sample of held-out lines:

attention  "Edge transformers": every (token u -> token v) pair seen at least --min-uses times gets
           one head per trace offset (--offsets, default 2,3,4 tokens back) holding the counts of
           the token found there whenever u -> v was taken (full counts: an upper bound on what
           capped sparse keys could hold). At a held-out position after u, the model's probability
           of each such v is re-weighted by the naive-Bayes ratio prod_h P(f_h | u->v) / P(f_h | u)
           (smoothed by --alpha) and renormalised within those edges (mass preserving, so still a
           proper distribution).
categories "Embeddings + abstraction": random-indexing embeddings (each token's sparse vector sums
           the random index vectors of its left and right neighbours; top --dims magnitudes kept),
           leader clustering at cosine --threshold, and the category's successor counts mixed into
           the model's prediction for tokens seen less often than their category:
           p' = (1 - l) p + l p_cat, l = k / (k + count(u)), k = --lam.

Prints the model's bits per byte on the sample and each probe's. A probe that does not lower them
is not worth building in that form. Slow (pure Python): a few minutes on the wiki split.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import math
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import melvin  # noqa: E402

STOP = 256


def lines_of(path):
    with open(path, "rb") as f:
        return f.read().split(b"\n")


def segment(core, line):
    return [STOP] + [d[0] for d in core.score_detail(line)]


def probe_attention(core, train_ids, sample, args):
    offs = [int(x) for x in args.offsets.split(",")]
    edge_n, node_n = collections.Counter(), collections.Counter()
    edge_f = collections.defaultdict(collections.Counter)
    node_f = collections.defaultdict(collections.Counter)
    for ids in train_ids:
        for t in range(1, len(ids)):
            u, v = ids[t - 1], ids[t]
            edge_n[u, v] += 1
            node_n[u] += 1
            for h, o in enumerate(offs):
                f = ids[t - o] if t - o >= 0 else -1
                edge_f[u, v, h][f] += 1
                node_f[u, h][f] += 1
    units = collections.defaultdict(list)
    for (u, v), c in edge_n.items():
        if c >= args.min_uses:
            units[u].append(v)
    base = new = 0.0
    for line, detail, ids in sample:
        pos = 0
        for t in range(1, len(ids)):
            u, v = ids[t - 1], ids[t]
            bits = detail[t - 1][1]
            base += bits
            unit = units.get(u)
            if unit and len(unit) >= 2 and v in unit:
                dist = core.distribution(line[:pos])
                feats = [ids[t - o] if t - o >= 0 else -1 for o in offs]
                w = {}
                for e in unit:
                    score = 0.0
                    for h, f in enumerate(feats):
                        prior = (node_f[u, h][f] + 1.0) / (node_n[u] + 2000.0)
                        like = (edge_f[u, e, h][f] + args.alpha * prior) / (edge_n[u, e] + args.alpha)
                        score += math.log(like / prior)
                    w[e] = score
                top = max(w.values())
                mass = sum(dist[e] for e in unit)
                z = sum(dist[e] * math.exp(w[e] - top) for e in unit)
                bits = -math.log2(mass * dist[v] * math.exp(w[v] - top) / z)
            new += bits
            if v != STOP:
                pos += len(core.node_payload(v))
    return base, new, sum(len(x) for x in units.values())


def probe_categories(core, train_ids, sample, args, n_nodes):
    def index_vector(tag):
        h = hashlib.blake2b(repr(tag).encode(), digest_size=16).digest()
        return [((h[2 * i] << 8 | h[2 * i + 1]) % 4096, 1 if h[8 + i] & 1 else -1) for i in range(4)]

    emb = collections.defaultdict(collections.Counter)
    count = collections.Counter()
    for ids in train_ids:
        for t in range(1, len(ids)):
            u = ids[t - 1]
            count[u] += 1
            for d, s in index_vector(("R", ids[t])):
                emb[u][d] += s
            if t >= 2:
                for d, s in index_vector(("L", ids[t - 2])):
                    emb[u][d] += s
    vec = {}
    for u, c in emb.items():
        top = sorted(c.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:args.dims]
        norm = math.sqrt(sum(x * x for _, x in top)) or 1.0
        vec[u] = {d: x / norm for d, x in top}
    leaders, cat = [], {}
    for u in sorted(vec, key=lambda u: (-count[u], u)):
        best, best_sim = None, args.threshold
        for i, lv in enumerate(leaders):
            sim = sum(x * lv.get(d, 0.0) for d, x in vec[u].items())
            if sim > best_sim:
                best, best_sim = i, sim
        if best is None:
            leaders.append(vec[u])
            best = len(leaders) - 1
        cat[u] = best
    nxt, tot = collections.defaultdict(collections.Counter), collections.Counter()
    for ids in train_ids:
        for t in range(1, len(ids)):
            c = cat.get(ids[t - 1])
            if c is not None:
                nxt[c][ids[t]] += 1
                tot[c] += 1
    base = new = 0.0
    for _line, detail, ids in sample:
        for t in range(1, len(ids)):
            u, v = ids[t - 1], ids[t]
            bits = detail[t - 1][1]
            base += bits
            c = cat.get(u)
            if c is not None and tot[c] > count[u]:
                lam = args.lam / (args.lam + count[u])
                p = (1 - lam) * 2.0 ** -bits + lam * (nxt[c][v] + 0.5) / (tot[c] + 0.5 * n_nodes)
                bits = -math.log2(p)
            new += bits
    return base, new, len(leaders)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train")
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--lines", type=int, default=400, help="held-out lines sampled (default 400)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-uses", type=int, default=2)
    ap.add_argument("--offsets", default="2,3,4")
    ap.add_argument("--alpha", type=float, default=10.0)
    ap.add_argument("--dims", type=int, default=16)
    ap.add_argument("--threshold", type=float, default=0.1)
    ap.add_argument("--lam", type=float, default=0.5)
    args = ap.parse_args(argv)
    g = melvin.Graph()
    train = lines_of(args.train)
    for line in train:
        g.feed(line)
    core = g._core
    train_ids = [segment(core, line) for line in train]
    held = [x for x in lines_of(args.heldout) if x]
    random.Random(args.seed).shuffle(held)
    sample = []
    for line in held[:args.lines]:
        detail = core.score_detail(line)
        sample.append((line, detail, [STOP] + [d[0] for d in detail]))
    nbytes = sum(len(line) + 1 for line, _, _ in sample)
    base, att, n_units = probe_attention(core, train_ids, sample, args)
    _, cats, n_cats = probe_categories(core, train_ids, sample, args, g.stats()["nodes"])
    print(f"held-out sample: {len(sample)} lines, {nbytes} bytes")
    print(f"model                        {base / nbytes:.4f} bits/byte")
    print(f"+ attention ({n_units} units)     {att / nbytes:.4f} bits/byte")
    print(f"+ categories ({n_cats} categories) {cats / nbytes:.4f} bits/byte")


if __name__ == "__main__":
    sys.exit(main())
