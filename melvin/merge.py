"""Combining independently trained graphs.

Semantics of `merge(graphs)`:
- patterns are unified by (port, payload); their counts add; a pattern's level is the highest any
  input gave it, and its components are the split into two merged patterns with the shortest left
  part (so the choice does not depend on input order);
- contexts are unified by key (keys are derived from payloads, so the same history has the same key
  in every graph); edges (context, next pattern) add their counts; a context whose counts no longer
  fit 16 bits is rescaled (halved, rounding up) as training would have done;
- nodes are numbered canonically (the 257 base nodes, then by length, port and payload) and contexts
  by key, so the same inputs in any order give a byte-identical brain;
- the result takes `limits` (default: the first graph's) and is pruned to respect them.
Merging with an empty graph changes nothing observable: predictions, scores and counts are equal
(memory layout may differ).
"""
from __future__ import annotations

import numpy as np

from melvin._core.core import CTX_DTYPE, EDGE_DTYPE, NODE_DTYPE, Core
from melvin.errors import CapExceeded
from melvin.limits import Limits

_NONE = 0xFFFFFFFF
_N_BASE = 257


def _payloads(state) -> list[bytes]:
    arena = state["arena"]
    ends = np.cumsum(state["nodes"]["length"], dtype=np.int64)
    starts = ends - state["nodes"]["length"]
    return [arena[a:b] for a, b in zip(starts.tolist(), ends.tolist())]


def merge(graphs, limits: Limits | None = None):
    """Combine graphs trained independently (see the module docstring for the semantics)."""
    from melvin.graph import Graph

    graphs = list(graphs)
    if not graphs:
        raise ValueError("merge needs at least one graph")
    for g in graphs:
        if not isinstance(g, Graph):
            raise TypeError(f"merge takes melvin.Graph objects, got {type(g).__name__}")
    limits = limits or graphs[0].limits
    states = [g._core.export_state() for g in graphs]
    payloads = [_payloads(st) for st in states]

    # 1. Patterns: union by (port, payload), canonical order.
    info: dict[tuple[int, bytes], list] = {}
    for st, pays in zip(states, payloads):
        nodes = st["nodes"]
        for i, (pay, port, level, count) in enumerate(zip(pays, nodes["port"].tolist(),
                                                         nodes["level"].tolist(),
                                                         nodes["count"].tolist())):
            key = (port, pay) if i != _N_BASE - 1 else (-1, b"")          # STOP
            entry = info.get(key)
            if entry is None:
                info[key] = [count, level, set()]
            else:
                entry[0] += count
                entry[1] = max(entry[1], level)
            left = nodes["left"][i]
            if left != _NONE:
                info[key][2].add(len(pays[left]))
    base = [(0, bytes([b])) for b in range(256)] + [(-1, b"")]
    rest = sorted((k for k in info if k not in set(base)), key=lambda k: (len(k[1]), k[0], k[1]))
    order = base + rest
    new_id = {k: i for i, k in enumerate(order)}
    nn = len(order)
    nodes = np.zeros(nn, dtype=NODE_DTYPE)
    for i, key in enumerate(order):
        port, pay = key
        count, level, splits = info.get(key, [0, 0, set()])
        left = right = _NONE
        for cut in sorted(splits):
            a, b = new_id.get((port, pay[:cut])), new_id.get((port, pay[cut:]))
            if a is not None and b is not None:
                left, right = a, b
                break
        nodes[i] = (len(pay), level, max(port, 0), left, right, min(count, 0xFFFFFFF0))
    arena = b"".join(pay for _, pay in order)

    # 2. Edges as (context key, merged destination), summed.
    keys, dsts, counts, stamps = [], [], [], []
    for st, pays in zip(states, payloads):
        remap = np.array([new_id[(p, pay) if i != _N_BASE - 1 else (-1, b"")]
                          for i, (p, pay) in enumerate(zip(st["nodes"]["port"].tolist(), pays))],
                         dtype=np.uint32)
        e = st["edges"]
        keys.append(st["contexts"]["key"][e["ctx"]])
        dsts.append(remap[e["dst"]])
        counts.append(e["count"].astype(np.int64))
        stamps.append(e["stamp"])
    key = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    dst = np.concatenate(dsts) if dsts else np.zeros(0, np.uint32)
    cnt = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    stp = np.concatenate(stamps) if stamps else np.zeros(0, np.uint16)
    order_e = np.lexsort((dst, key))
    key, dst, cnt, stp = key[order_e], dst[order_e], cnt[order_e], stp[order_e]
    if len(key):
        first = np.ones(len(key), dtype=bool)
        first[1:] = (key[1:] != key[:-1]) | (dst[1:] != dst[:-1])
        starts = np.flatnonzero(first)
        key, dst = key[starts], dst[starts]
        cnt = np.add.reduceat(cnt, starts)
        stp = np.maximum.reduceat(stp, starts)
    ctx_keys, ctx_of = np.unique(key, return_inverse=True)
    # Rescale contexts whose summed counts overflow 16 bits (as training's rescaling would).
    if len(cnt):
        peak = np.zeros(len(ctx_keys), dtype=np.int64)
        np.maximum.at(peak, ctx_of, cnt)
        shift = np.zeros(len(ctx_keys), dtype=np.int64)
        while True:
            over = (peak + (1 << shift) - 1) >> shift > 0xFFFF
            if not over.any():
                break
            shift[over] += 1
        s = shift[ctx_of]
        cnt = (cnt + (np.int64(1) << s) - 1) >> s
    ctxs = np.zeros(len(ctx_keys), dtype=CTX_DTYPE)
    ctxs["key"] = ctx_keys
    edges = np.zeros(len(key), dtype=EDGE_DTYPE)
    edges["ctx"] = ctx_of
    edges["dst"] = dst
    edges["count"] = cnt
    edges["stamp"] = stp

    counters = {name: 0 for name in ("bytes_fed", "tokens_fed", "episodes", "formed",
                                     "pruned_nodes", "pruned_edges", "pruned_contexts", "prunes",
                                     "peak_memory_bytes")}
    for st in states:
        for name in counters:
            if name != "peak_memory_bytes":
                counters[name] += st["counters"][name]

    # 3. Build under relaxed caps, prune to the real ones, rebuild compactly under them.
    relaxed = dict(limits.core_kwargs())
    relaxed["max_memory"] = max(limits.max_memory, 64 * (nn + len(edges) + len(ctxs)) + len(arena) * 8
                                + (1 << 20))
    relaxed["max_nodes"] = max(limits.max_nodes, nn)
    relaxed["max_edges"] = max(limits.max_edges, len(edges))
    core = Core(**relaxed, empty=True)
    core.import_state(nodes, arena, ctxs, edges, counters)
    st = core.stats()
    if st["memory_bytes"] > limits.max_memory or st["edges"] > limits.max_edges:
        core.prune_to(int(limits.max_memory * 0.7), min(limits.max_edges, int(limits.max_edges)))
    if core.stats()["nodes"] > limits.max_nodes:
        raise CapExceeded(f"merged graph has {core.stats()['nodes']} patterns, over max_nodes "
                          f"{limits.max_nodes}; raise Limits.max_nodes")
    if relaxed != limits.core_kwargs():
        st = core.export_state()
        st["counters"]["peak_memory_bytes"] = 0       # the relaxed build's peak is not this graph's
        final = Core(**limits.core_kwargs(), empty=True)
        final.import_state(st["nodes"], st["arena"], st["contexts"], st["edges"], st["counters"])
        core = final
    return Graph(limits, graphs[0].seed, _core=core)
