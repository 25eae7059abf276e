"""Combining independently trained graphs.

Semantics of `merge(graphs)`:
- patterns are unified by (port, payload); their counts add; a pattern's level is the highest any
  input gave it, and its components are the split into two merged patterns with the shortest left
  part (so the choice does not depend on input order);
- contexts are unified by key (keys are derived from payloads, so the same history has the same key
  in every graph); edges (context, next pattern) add their counts; a context whose counts no longer
  fit 16 bits is rescaled (halved, rounding up) as training would have done;
- patterns are identified by their 64-bit key (a hash of port and payload) and numbered canonically
  (the 257 base nodes, then by length and key), contexts
  by key, so the same inputs in any order give a byte-identical brain;
- the result takes `limits` (default: the first graph's) and is pruned to respect them.
Merging with an empty graph changes nothing observable: predictions, scores and counts are equal
(memory layout may differ).
"""
from __future__ import annotations

import numpy as np

from melvin._core.core import CTX_DTYPE, EDGE_DTYPE, NODE_DTYPE, Core
from melvin.errors import CapExceeded, CorruptBrainError
from melvin.limits import Limits

_NONE = 0xFFFFFFFF
_N_BASE = 257


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
    keys = [g._core.node_keys() for g in graphs]

    # 1. Patterns: union by key (a hash of port and payload), canonical order: the 257 base nodes
    #    (identical in every graph), then by (length, key), so components precede what they form.
    all_keys = np.concatenate(keys)
    all_nodes = np.concatenate([st["nodes"] for st in states])
    uniq, first, inv = np.unique(all_keys, return_index=True, return_inverse=True)
    length = all_nodes["length"][first].astype(np.int64)
    base_keys = keys[0][:_N_BASE]
    is_base = np.isin(uniq, base_keys)
    rest = np.flatnonzero(~is_base)
    rest = rest[np.lexsort((uniq[rest], length[rest]))]
    order = np.concatenate([np.searchsorted(uniq, base_keys), rest])   # merged id -> uniq index
    new_id = np.empty(len(uniq), dtype=np.int64)
    new_id[order] = np.arange(len(order))
    nn = len(order)
    remaps, offset = [], 0
    for k in keys:
        remaps.append(new_id[inv[offset:offset + len(k)]])
        offset += len(k)
    merged_of_row = np.concatenate(remaps)

    nodes = np.zeros(nn, dtype=NODE_DTYPE)
    src = first[order]                                   # a source row for every merged node
    nodes["length"] = all_nodes["length"][src]
    nodes["port"] = all_nodes["port"][src]
    counts = np.bincount(merged_of_row, weights=all_nodes["count"].astype(np.float64), minlength=nn)
    nodes["count"] = np.minimum(counts, 0xFFFFFFF0).astype(np.uint32)
    level = np.zeros(nn, dtype=np.int64)
    np.maximum.at(level, merged_of_row, all_nodes["level"].astype(np.int64))
    nodes["level"] = level
    # Components: of the splits the inputs used, the one with the shortest left part.
    nodes["left"] = _NONE
    nodes["right"] = _NONE
    lefts, rights, owners = [], [], []
    for st, remap in zip(states, remaps):
        has = np.flatnonzero(st["nodes"]["left"] != _NONE)
        owners.append(remap[has])
        lefts.append(remap[st["nodes"]["left"][has]])
        rights.append(remap[st["nodes"]["right"][has]])
    owner, left, right = (np.concatenate(x) if x else np.zeros(0, np.int64)
                          for x in (owners, lefts, rights))
    if len(owner):
        pick = np.lexsort((left, nodes["length"][left], owner))
        owner, left, right = owner[pick], left[pick], right[pick]
        firsts = np.ones(len(owner), dtype=bool)
        firsts[1:] = owner[1:] != owner[:-1]
        nodes["left"][owner[firsts]] = left[firsts]
        nodes["right"][owner[firsts]] = right[firsts]
    # Payloads gathered from the source arenas in merged order.
    arenas = [np.frombuffer(st["arena"], dtype=np.uint8) for st in states]
    arena_all = np.concatenate(arenas) if arenas else np.zeros(0, np.uint8)
    bases = np.cumsum([0] + [len(a) for a in arenas])[:-1]
    starts_all = np.concatenate([
        base + np.cumsum(st["nodes"]["length"], dtype=np.int64) - st["nodes"]["length"]
        for base, st in zip(bases, states)])
    lens = nodes["length"].astype(np.int64)
    total = int(lens.sum())
    out_starts = np.cumsum(lens) - lens
    gather = np.repeat(starts_all[src] - out_starts, lens) + np.arange(total, dtype=np.int64)
    arena = arena_all[gather].tobytes()

    # 2. Edges as (context key, merged destination), summed. Contexts are unified first (each
    #    graph's keys are distinct, and there are fewer contexts than edges); a context no edge
    #    uses is dropped.
    ctx_all, ctx_inv = np.unique(np.concatenate([st["contexts"]["key"] for st in states]),
                                 return_inverse=True)
    rows, offset = [], 0
    for st in states:
        rows.append(ctx_inv[offset + st["edges"]["ctx"].astype(np.int64)])
        offset += len(st["contexts"])
    ctx_of_edge = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    used = np.zeros(len(ctx_all), dtype=bool)
    used[ctx_of_edge] = True
    if not used.all():
        ctx_of_edge = (np.cumsum(used) - 1)[ctx_of_edge]
    ctx_keys = ctx_all[used]
    dsts = np.concatenate([remap[st["edges"]["dst"]] for st, remap in zip(states, remaps)])
    cnt = np.concatenate([st["edges"]["count"] for st in states])
    stp = np.concatenate([st["edges"]["stamp"] for st in states])
    ctx_of, dst, cnt, stamp = _sum_edges(ctx_of_edge, dsts, cnt, stp, len(ctx_keys), nn)
    # Rescale contexts whose summed counts overflow 16 bits (as training's rescaling would).
    if len(cnt):
        # edges are sorted by context and every context has one: each context is one run
        ctx_start = np.flatnonzero(np.concatenate(([True], ctx_of[1:] != ctx_of[:-1])))
        peak = np.maximum.reduceat(cnt, ctx_start)
        shift = np.zeros(len(ctx_keys), dtype=np.int64)
        while True:
            over = (peak + (np.int64(1) << shift) - 1) >> shift > 0xFFFF
            if not over.any():
                break
            shift[over] += 1
        if shift.any():
            sh = shift[ctx_of]
            cnt = (cnt + (np.int64(1) << sh) - 1) >> sh
    ctxs = np.zeros(len(ctx_keys), dtype=CTX_DTYPE)
    ctxs["key"] = ctx_keys
    edges = np.zeros(len(cnt), dtype=EDGE_DTYPE)
    edges["ctx"] = ctx_of
    edges["dst"] = dst
    edges["count"] = cnt
    edges["stamp"] = stamp
    counters = {name: 0 for name in ("bytes_fed", "tokens_fed", "episodes", "formed",
                                     "pruned_nodes", "pruned_edges", "pruned_contexts", "prunes",
                                     "peak_memory_bytes")}
    for st in states:
        for name in counters:
            if name != "peak_memory_bytes":
                counters[name] += st["counters"][name]

    # 3. Build under the real caps; if the sum does not fit them, build under relaxed caps, prune
    #    to the real ones and rebuild compactly under them.
    core = None
    if nn <= limits.max_nodes and len(edges) <= limits.max_edges:
        core = Core(**limits.core_kwargs(), empty=True)
        try:
            core.import_state(nodes, arena, ctxs, edges, counters, verify=False)
        except CorruptBrainError:             # over max_memory (the arrays are consistent)
            core = None
    if core is None:
        core = _build_pruned(nodes, arena, ctxs, edges, counters, limits)
    return Graph(limits, graphs[0].seed, _core=core)


def _build_pruned(nodes, arena, ctxs, edges, counters, limits: Limits) -> Core:
    """A merged graph over its caps: built under relaxed caps, pruned, rebuilt under the real ones."""
    nn = len(nodes)
    relaxed = dict(limits.core_kwargs())
    relaxed["max_memory"] = max(limits.max_memory, 64 * (nn + len(edges) + len(ctxs)) + len(arena) * 8
                                + (1 << 20))
    relaxed["max_nodes"] = max(limits.max_nodes, nn)
    relaxed["max_edges"] = max(limits.max_edges, len(edges))
    core = Core(**relaxed, empty=True)
    core.import_state(nodes, arena, ctxs, edges, counters, verify=False)
    st = core.stats()
    if st["memory_bytes"] > limits.max_memory or st["edges"] > limits.max_edges:
        core.prune_to(int(limits.max_memory * 0.7), min(limits.max_edges, int(limits.max_edges)))
    if core.stats()["nodes"] > limits.max_nodes:
        raise CapExceeded(f"merged graph has {core.stats()['nodes']} patterns, over max_nodes "
                          f"{limits.max_nodes}; raise Limits.max_nodes")
    if relaxed == limits.core_kwargs():
        return core
    st = core.export_state()
    st["counters"]["peak_memory_bytes"] = 0           # the relaxed build's peak is not this graph's
    final = Core(**limits.core_kwargs(), empty=True)
    final.import_state(st["nodes"], st["arena"], st["contexts"], st["edges"], st["counters"],
                       verify=False)
    return final


def _sum_edges(ctx, dst, count, stamp, n_ctx: int, n_nodes: int):
    """Edges (ctx, dst) of several graphs, each pair at most once per graph: the distinct pairs
    sorted by (ctx, dst), with counts summed (int64) and the latest stamp.

    When a pair and a 16-bit field fit one 64-bit word together, each field is aggregated by one
    value sort of (pair, field) words: sorting values is several times faster than the argsort
    behind np.unique(return_inverse), and a sorted run's fields are contiguous."""
    if len(ctx) == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.uint32), np.zeros(0, np.int64),
                np.zeros(0, np.uint16))
    bd = max(1, (n_nodes - 1).bit_length())
    if max(1, (n_ctx - 1).bit_length()) + bd + 16 > 64:
        pair = (ctx.astype(np.uint64) << np.uint64(32)) | dst.astype(np.uint64)
        pairs, inv = np.unique(pair, return_inverse=True)
        total = np.bincount(inv, weights=count.astype(np.float64), minlength=len(pairs))
        latest = np.zeros(len(pairs), dtype=np.uint16)
        np.maximum.at(latest, inv, stamp)
        return ((pairs >> np.uint64(32)).astype(np.int64),
                (pairs & np.uint64(0xFFFFFFFF)).astype(np.uint32),
                total.astype(np.int64), latest)
    pair = ((ctx.astype(np.uint64) << np.uint64(bd)) | dst.astype(np.uint64)) << np.uint64(16)
    words = np.sort(pair | count.astype(np.uint64))
    ids = words >> np.uint64(16)
    start = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
    pairs = ids[start]
    del ids
    total = np.add.reduceat((words & np.uint64(0xFFFF)).astype(np.int64), start)
    # the same runs sorted by stamp instead: each run's last word holds its latest stamp
    words = np.sort(pair | stamp.astype(np.uint64))
    del pair
    last = np.append(start[1:], len(words)) - 1
    latest = (words[last] & np.uint64(0xFFFF)).astype(np.uint16)
    return ((pairs >> np.uint64(bd)).astype(np.int64),
            (pairs & np.uint64((1 << bd) - 1)).astype(np.uint32), total, latest)
