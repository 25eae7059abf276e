"""Combining independently trained graphs.

Semantics of `merge(graphs)`:
- patterns are unified by (port, payload); their counts add; a pattern's level is the highest any
  input gave it, and its components are the split into two merged patterns with the shortest left
  part among those the inputs used;
- contexts are unified by key (keys are derived from payloads, so the same history has the same key
  in every graph); edges (context, next pattern) add their counts and keep the later stamp; where
  a sum would not fit 16 bits, both sides' counts in that context are first rescaled (halved,
  rounding up) as often as needed, as training's rescaling would;
- the graphs are folded in a canonical order (largest first: edges, contexts, patterns, bytes fed,
  then the bytes of their brains), each added into the first by hash lookups (Core.absorb), so the
  same inputs in any order give a byte-identical brain; new patterns, contexts and edges are
  numbered after the first graph's, in the order of the graph that brought them;
- the result takes `limits` (default: the first graph's); a sum over them loses its least recently
  used singletons (edges seen once) until it fits 90% of max_memory, aging everything only if those
  run out, and is rebuilt compactly; graphs with
  different context limits (byte_context, context_len) cannot be merged (ValueError).
Merging with an empty graph changes nothing observable: predictions, scores and counts are equal
(memory layout may differ).
"""
from __future__ import annotations

import contextlib
import hashlib

from melvin._core.core import Core
from melvin.errors import CapExceeded
from melvin.limits import Limits

_RESERVE = 16 << 20
MERGE_FILL = 0.9        # a merged graph over its memory cap is trimmed to this share of it


def merge(graphs, limits: Limits | None = None):
    """Combine graphs trained independently (see the module docstring for the semantics)."""
    graphs = _validate(graphs)
    return _merge(graphs, limits or graphs[0].limits, consume=False)


def merge_consuming(graphs, limits: Limits | None = None):
    """merge() that may build the result inside the largest input instead of a copy of it, and
    frees every other input's tables as soon as it is added (for brains loaded only to be merged,
    as distributed training does: the merge's peak memory is then about the result plus one
    input). Afterwards the inputs are empty graphs, except the largest, which is unusable; a
    failure leaves them partly merged."""
    graphs = _validate(graphs)
    return _merge(graphs, limits or graphs[0].limits, consume=True)


def _validate(graphs) -> list:
    from melvin.graph import Graph

    graphs = list(graphs)
    if not graphs:
        raise ValueError("merge needs at least one graph")
    for g in graphs:
        if not isinstance(g, Graph):
            raise TypeError(f"merge takes melvin.Graph objects, got {type(g).__name__}")
    return graphs


def _spend(g) -> None:
    """Free a consumed input's tables: it becomes an empty graph."""
    g._core = Core(**g.limits.core_kwargs())


def _canonical(graphs) -> list:
    """Largest first by counts; graphs equal in every count are ordered by their brain's bytes."""
    from melvin.persist import dumps

    def size(g):
        st = g.stats()
        return (-st["edges"], -st["contexts"], -st["nodes"], -st["bytes_fed"], -st["tokens_fed"],
                -st["episodes"])

    sizes = [size(g) for g in graphs]
    digest = {}
    for i, s in enumerate(sizes):
        if sizes.count(s) > 1:
            digest[i] = hashlib.sha256(dumps(graphs[i])).digest()
    order = sorted(range(len(graphs)), key=lambda i: (sizes[i], digest.get(i, b"")))
    return [graphs[i] for i in order]


def _merge(graphs, limits: Limits, consume: bool):
    # Every input stays still while it is read (and, consumed, emptied); locks are taken in one
    # global order, so merges of overlapping inputs on other threads cannot deadlock.
    with contextlib.ExitStack() as held:
        for g in sorted({id(g): g for g in graphs}.values(), key=id):
            held.enter_context(g._lock)
        return _merge_held(graphs, limits, consume)


def _merge_held(graphs, limits: Limits, consume: bool):
    from melvin.graph import Graph

    for g in graphs:
        if (tuple(g.limits.byte_context), g.limits.context_len) != \
                (tuple(limits.byte_context), limits.context_len):
            raise ValueError("graphs with different context limits (byte_context, context_len) "
                             "have incompatible contexts and cannot be merged")
    order = _canonical(graphs)
    stats = [g.stats() for g in order]
    # Room for the whole sum while it is built; pruned to the real caps afterwards.
    relaxed = dict(limits.core_kwargs())
    relaxed["max_memory"] = max(limits.max_memory,
                                2 * sum(s["memory_bytes"] for s in stats) + _RESERVE)
    relaxed["max_nodes"] = max(limits.max_nodes, sum(s["nodes"] for s in stats))
    relaxed["max_edges"] = max(limits.max_edges, sum(s["edges"] for s in stats))
    base = order[0]
    model = {k: v for k, v in limits.core_kwargs().items()
             if k not in ("max_memory", "max_nodes", "max_edges")}
    if consume and all(base._core.limits[k] == v for k, v in model.items()):
        core = base._core
        core.set_caps(relaxed["max_memory"], relaxed["max_nodes"], relaxed["max_edges"])
    else:
        st = base._core.export_state()
        core = Core(**relaxed, empty=True)
        core.import_state(st["nodes"], st["arena"], st["contexts"], st["edges"], st["counters"],
                          verify=False, categories=st["categories"], profiles=st["profiles"])
        del st
    for g in order[1:]:
        core.absorb(g._core)
        if consume:
            _spend(g)
    core.shrink()
    st = core.stats()
    if st["nodes"] > limits.max_nodes:
        raise CapExceeded(f"merged graph has {st['nodes']} patterns, over max_nodes "
                          f"{limits.max_nodes}; raise Limits.max_nodes")
    if st["memory_bytes"] <= limits.max_memory and st["edges"] <= limits.max_edges:
        core.set_caps(limits.max_memory, limits.max_nodes, limits.max_edges)
        return Graph(limits, base.seed, _core=core)
    # Over the caps: drop the least recently used singletons the sum must lose (one aging round,
    # as training prunes, would drop about half of it), then rebuild compactly under the caps.
    # Both depend on the contents only, so the result does too.
    core.trim_to(int(limits.max_memory * MERGE_FILL), limits.max_edges)
    st = core.export_state()
    capacities = core.compact_capacities()
    del core
    if consume:
        _spend(base)                                  # it may hold the relaxed build
    st["counters"]["peak_memory_bytes"] = 0           # the relaxed build's peak is not this graph's
    final = Core(**limits.core_kwargs(), empty=True)
    final.import_state(st["nodes"], st["arena"], st["contexts"], st["edges"], st["counters"],
                       capacities, verify=False, categories=st["categories"], profiles=st["profiles"])
    return Graph(limits, base.seed, _core=final)
