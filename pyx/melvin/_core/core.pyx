# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The owning extension type: one GraphC, its pool, and the Python surface of the core."""
import bisect
import heapq
import math
import sys
import threading

import numpy as np
cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset, memcmp
from libc.stdlib cimport malloc, free
from libc.math cimport pow
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_FAILED
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_READ
from melvin._core.mem cimport pool_alloc
from melvin._core.defs cimport *
from melvin._core.mem cimport ERR_NONE, ERR_CAP, ERR_NOMEM, ERR_OVERFLOW, ERR_LIMIT, pool_free
from melvin._core.store cimport (GraphC, ix_candidate, store_init, store_free, store_accounted, node_find, ctx_find,
                                 edge_find, trie_child, trie_step, match_longest, reserve_nodes, reserve_ctxs,
                                 reserve_edges, reserve_trie, append_node, append_ctx, rebuild_index,
                                 link_edge_lists, rebuild_edge_index,
                                 trie_insert_node, store_alloc_exact,
                                 trie_build, shrink_to_fit, ctx_find_many,
                                 caps_snapshot, caps_restore, verify_lists,
                                 verify_context_index, verify_edge_index, index_filled,
                                 mapped_order, mapped_edge_index, ix_mask, ix_set_capacity, ix_value, IX_CROWDED,
                                 IX_CROWDED_FILLED)
from melvin._core.embed cimport EMB_MAX, EmbC, embed_ctx, emb_cosine, cats_restore, cats_rechain
from melvin._core.model cimport (TraceC, trace_reset, trace_push, trace_contexts, graph_init,
                                 add_port, absorb, feed_traced, feed_bridge, prob_of, score_episode, prune_to, trim_to, compact_bytes,
                                 compact_caps,
                                 prob_next, prob_attended, spell_step, attn_values, excl_settled,
                                 SMOOTH_RECALL, KIND_CAT, RecallC, recall_gather, recall_best,
                                 recall_free)
from melvin.errors import CapExceeded, InvariantError, CorruptBrainError

cnp.import_array()


def _join_all_the_way(thread):
    """Wait for a thread that writes this graph's tables even if the wait is interrupted (Ctrl-C):
    freeing the tables under it would corrupt memory. The interruption is raised afterwards."""
    interrupted = None
    while thread.is_alive():
        try:
            thread.join()
        except BaseException as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


# Loading decodes, counts (each context's distinct successors: a context's sole edge is not
# indexed) and indexes the edges on a second thread, while this one indexes the nodes and
# contexts, builds the trie and then links the successor lists (disjoint fields, no allocation).
# Once a brain has this many edges: below it a thread costs more than it saves.
# A module global so tests can lower it.
PARALLEL_LOAD_EDGES = 1 << 20
# Format 4: edges per share of the edge index check, which both loading threads take in turn.
SHARE_CHUNK = 1 << 20


def _aligned(a):
    """A C-contiguous, aligned view or copy: records read from a file section (or a memory map)
    may start at any byte offset, and typed access needs natural alignment."""
    a = np.ascontiguousarray(a)
    return a if a.flags.aligned else a.copy()


def _records(a, dtype):
    """The bytes of an array of file records (a view where it can be) in the host's byte order:
    the loader decodes them with unaligned native loads."""
    a = np.ascontiguousarray(a)
    if a.dtype != dtype:
        raise CorruptBrainError(f"records of {a.dtype} where {dtype} was expected")
    if sys.byteorder == "big":
        a = a.astype(dtype.newbyteorder(">"))
    raw = a.view(np.uint8).reshape(-1)
    return raw if len(raw) else np.zeros(1, np.uint8)     # [0] of an empty view is an error


# A node as export_state gives it (merge, distributed shards), and as brain files of format 2
# stored it: 20 bytes, 4-byte aligned.
NODE_DTYPE = np.dtype([("length", "<u2"), ("level", "u1"), ("port", "u1"), ("left", "<u4"),
                       ("right", "<u4"), ("count", "<u4"), ("category", "<u2"),
                       ("reserved", "<u2")])
# Format 3 stores 14 bytes: no right component, which is the pattern that spells the rest of
# the payload after the left one's (patterns are unique per port, and components share their
# node's port), found through the node index when loading.
NODE_RECORD_DTYPE = np.dtype([("length", "<u2"), ("level", "u1"), ("port", "u1"),
                              ("left", "<u4"), ("count", "<u4"), ("category", "<u2")])
# Format 1 (before categories).
NODE_DTYPE_V1 = np.dtype([("length", "<u2"), ("level", "u1"), ("port", "u1"), ("left", "<u4"),
                          ("right", "<u4"), ("count", "<u4")])


def cat_dtype(uint32_t dims):
    """File layout of a category profile with `dims` slots."""
    return np.dtype([("top", "<u4"), ("n", "<u4"), ("refreshed", "<u4"), ("dims", "<u4", (dims,)),
                     ("w", "<f4", (dims,))])


def node_records(nodes):
    """NODE_DTYPE records (export_range) as format-3 file records."""
    out = np.zeros(len(nodes), NODE_RECORD_DTYPE)
    for field in NODE_RECORD_DTYPE.names:
        out[field] = nodes[field]
    return out


CTX_DTYPE = np.dtype([("key", "<u8")])
EDGE_DTYPE = np.dtype([("ctx", "<u4"), ("dst", "<u4"), ("count", "<u2"), ("stamp", "<u2")])
# Format 4 holds contexts and edges as the core does (CtxC, EdgeC), and their index slots, so a
# mapped file is used in place.
CTX_RAW_DTYPE = np.dtype([("key_lo", "<u4"), ("key_hi", "<u4"), ("head", "<u4"), ("total", "<u4"),
                          ("distinct", "<u4")])
EDGE_RAW_DTYPE = np.dtype([("ctx", "<u4"), ("dst", "<u4"), ("next", "<u4"), ("count", "<u2"),
                           ("stamp", "<u2")])
assert CTX_RAW_DTYPE.itemsize == sizeof(CtxC) and EDGE_RAW_DTYPE.itemsize == sizeof(EdgeC)
RAW_IN_PLACE = sys.byteorder == "little"   # else format 4's records are byte-swapped copies
COUNTER_NAMES = ("bytes_fed", "tokens_fed", "episodes", "formed", "pruned_nodes", "pruned_edges",
                 "pruned_contexts", "prunes", "peak_memory_bytes")
CAPACITY_NAMES = ("nodes", "contexts", "edges", "trie", "arena", "node_index", "context_index",
                  "edge_index", "trie_index")




# The duplicate checks look every item up by its key: two cache misses each (index slot, then the
# record it names), so they are pipelined like store.ctx_find_many -- the slot of item i+16 and
# the record of item i+8 are fetched while item i is looked up. Each returns the first item its
# lookup does not find as itself (NONE if there is none).

cdef uint32_t _first_edge_not_found(GraphC* g) noexcept nogil:
    """Needs every edge's ctx and dst checked in range first (they are hashed, not followed)."""
    cdef uint32_t e, s, n = g.n_edges
    cdef uint64_t cap = g.edge_ix.capacity
    for e in range(n):
        if cap and e + 16 < n:
            prefetch(&g.edge_ix.slots[fastrange(edge_hash(g.edges[e + 16].ctx, g.edges[e + 16].dst),
                                                cap)])
        if e + 8 < n:
            s = ix_candidate(&g.edge_ix, edge_hash(g.edges[e + 8].ctx, g.edges[e + 8].dst))
            if s != NONE:
                prefetch(&g.edges[s])
        if edge_find(g, g.edges[e].ctx, g.edges[e].dst) != e:
            return e
    return NONE


cdef uint32_t _first_node_not_found(GraphC* g) noexcept nogil:
    """Needs every node's payload checked inside the arena first."""
    cdef uint32_t v, s, n = g.n_nodes
    cdef uint64_t cap = g.node_ix.capacity
    cdef NodeC* nd
    for v in range(n):
        if cap and v + 16 < n:
            prefetch(&g.node_ix.slots[fastrange(g.nodes[v + 16].key, cap)])
        if v + 8 < n:
            s = ix_candidate(&g.node_ix, g.nodes[v + 8].key)
            if s != NONE:
                prefetch(&g.nodes[s])
        nd = &g.nodes[v]
        if node_find(g, nd.key, g.arena + nd.payload_off, nd.payload_len, nd.port) != v:
            return v
    return NONE


cdef extern from *:
    """
    static inline uint64_t melvin_take(uint64_t* p) {
        return __atomic_fetch_add(p, 1, __ATOMIC_RELAXED);
    }
    """
    uint64_t atomic_take "melvin_take"(uint64_t* p) noexcept nogil


cdef _refuse_crowded(str what):
    raise CorruptBrainError(f"{what} index is crowded: its items share slots far beyond chance "
                            "(crafted keys would make loading and lookups take quadratic time)")


cdef _refuse_node_side(uint32_t dup_node, uint32_t bad_right, int trie_ok):
    """Loading (either format): raise for what _load_node_side found wrong, if anything."""
    if dup_node == IX_CROWDED:
        _refuse_crowded("node")
    if dup_node != NONE:
        raise CorruptBrainError(f"node {dup_node} repeats an earlier node's pattern")
    if bad_right != NONE:
        raise CorruptBrainError(f"node {bad_right} has invalid components")
    if trie_ok == -2:
        _refuse_crowded("trie")
    if trie_ok < 0:
        raise CorruptBrainError("trie capacity too small for the payloads")


cdef uint32_t _share_edge_index(GraphC* g, uint64_t* next_chunk, uint64_t* found,
                                uint64_t chunk) noexcept nogil:
    """Loading format 4: check chunks of the edge index (store.verify_edge_index), taken from a
    counter both loading threads share, until none is left or one fails. Returns the first
    invalid edge met, or NONE. A thread takes chunks in increasing order and stops only at a
    failure, so the smaller of the two threads' answers is the first invalid edge of all."""
    cdef uint64_t start
    cdef uint32_t bad
    while True:
        start = atomic_take(next_chunk) * chunk
        if start >= g.n_edges:
            return NONE
        bad = verify_edge_index(g, <uint32_t>start,
                                <uint32_t>min(start + chunk, <uint64_t>g.n_edges), found)
        if bad != NONE:
            return bad


cdef uint32_t _decode_edges(GraphC* g, const uint8_t* raw, uint32_t start, uint32_t stop,
                            uint32_t nc, uint32_t nn, uint64_t* seen) noexcept nogil:
    """Loading: edge records start..stop-1 (12 bytes: ctx, dst, count, stamp; native order) into
    the edge array, after the ones before start, marking each context in the bitmap seen[0:w]
    and, once it has two or more successors, in seen[w:2w] (w words for nc contexts): the edge
    index leaves out a context's sole edge. Returns the first invalid edge, or NONE."""
    cdef uint64_t w = (<uint64_t>nc + 63) >> 6, bit
    cdef uint32_t e, e_ctx, e_dst
    cdef uint16_t e_count, e_stamp
    cdef const uint8_t* rec
    for e in range(start, stop):
        rec = raw + <size_t>e * 12
        memcpy(&e_ctx, rec, 4)
        memcpy(&e_dst, rec + 4, 4)
        memcpy(&e_count, rec + 8, 2)
        memcpy(&e_stamp, rec + 10, 2)
        if e_ctx >= nc or e_dst >= nn or e_count == 0:
            return e
        g.edges[e].ctx = e_ctx
        g.edges[e].dst = e_dst
        g.edges[e].count = e_count
        g.edges[e].stamp = e_stamp
        g.n_edges = e + 1
        bit = <uint64_t>1 << (e_ctx & 63)
        seen[w + (e_ctx >> 6)] |= seen[e_ctx >> 6] & bit
        seen[e_ctx >> 6] |= bit
    return NONE


cdef void _decode_ctxs(GraphC* g, const uint8_t* raw, uint32_t start, uint32_t stop) noexcept nogil:
    """Loading: context records start..stop-1 (their 8-byte keys) into unlinked contexts."""
    cdef uint32_t c
    cdef uint64_t key
    for c in range(start, stop):
        memcpy(&key, raw + <size_t>c * 8, 8)
        g.ctxs[c].key_lo = <uint32_t>key
        g.ctxs[c].key_hi = <uint32_t>(key >> 32)
        g.ctxs[c].head = NONE
        g.ctxs[c].total = 0
        g.ctxs[c].distinct = 0
    g.n_ctxs = stop


cdef uint32_t _find_right_components(GraphC* g) noexcept nogil:
    """Loading format 3 (no right components stored): each node with a left component gets the
    node that spells the rest of its payload, on its port, as its right one, through the node
    index. Returns the first node whose left component is not shorter than it, or whose rest is
    no earlier node (NONE if none)."""
    cdef uint32_t v, r, ll, lr
    cdef NodeC* nd
    cdef const uint8_t* p
    for v in range(g.n_nodes):
        nd = &g.nodes[v]
        if nd.left == NONE:
            continue
        ll = g.nodes[nd.left].payload_len
        if ll == 0 or ll >= nd.payload_len:
            return v
        lr = nd.payload_len - ll
        p = g.arena + nd.payload_off + ll
        r = node_find(g, node_key(poly_bytes(p, lr), nd.port, lr), p, lr, nd.port)
        if r == NONE or r >= v:
            return v
        nd.right = r
    return NONE


# Loading decodes the contexts and edges in runs of this many records, each checksummed just
# before it is decoded (see _decode_section): the file is read once, while it is in cache, where
# checksumming every section first read it twice (0.126 s of a 1 s load of a 457 MB brain).
LOAD_CHUNK = 1 << 16


cdef int _learn_episode(GraphC* g, TraceC* tr, const uint8_t* p, size_t n, uint8_t port,
                        const uint8_t* next_p, size_t next_n, TraceC* next_tr) noexcept nogil:
    """feed_traced, for Core.feed and feed_many. What was learned before a failure stays; the
    capacity grown for the step that failed is given back, so a failure that learned nothing
    leaves memory unchanged."""
    cdef uint64_t caps[9]
    cdef int rc
    caps_snapshot(g, caps)
    rc = feed_traced(g, tr, p, n, port, next_p, next_n, next_tr)
    if rc < 0:
        caps_restore(g, caps)
    return rc


cdef class Core:
    cdef GraphC g
    cdef readonly dict limits
    cdef uint32_t _n_categories        # loading: categories the node records may name
    cdef RecallC _recall               # generation's candidates (scratch)
    cdef void* _map                    # a brain file mapped privately (map_private), or NULL
    cdef size_t _map_len

    def __cinit__(self, *, size_t max_memory, uint32_t max_nodes, uint32_t max_edges,
                  uint32_t max_payload, uint32_t max_levels, uint32_t context_len,
                  uint32_t form_min_count, tuple byte_orders=(), uint32_t attention_heads=0,
                  bint word_tokens=False, uint32_t embedding_dims=0, uint32_t max_categories=0,
                  bint empty=False):
        memset(&self.g, 0, sizeof(GraphC))
        memset(&self._recall, 0, sizeof(RecallC))
        store_init(&self.g)
        self.g.pool.cap = max_memory
        self.g.pool.fail_at = -1
        self.g.max_nodes = max_nodes
        self.g.max_edges = max_edges
        self.g.max_payload = max_payload
        self.g.max_levels = max_levels
        self.g.context_len = context_len
        self.g.form_min_count = form_min_count
        if attention_heads > 64:
            raise ValueError("attention_heads: at most 64")
        self.g.attn_heads = attention_heads
        self.g.word_tokens = word_tokens
        if embedding_dims > EMB_MAX or max_categories > 0xFFFF:
            raise ValueError(f"embedding_dims: at most {EMB_MAX}; max_categories: at most 65535")
        self.g.emb_dims = embedding_dims
        self.g.max_cats = max_categories if embedding_dims else 0   # 0: no categories at all
        if len(byte_orders) > 8 or list(byte_orders) != sorted(set(byte_orders)) or \
                any(not 1 <= b <= 64 for b in byte_orders):
            raise ValueError("byte_orders: up to 8 distinct ascending lengths in [1, 64]")
        self.g.n_byte_orders = len(byte_orders)
        for i, b in enumerate(byte_orders):
            self.g.byte_orders[i] = b
        self.limits = dict(max_memory=max_memory, max_nodes=max_nodes, max_edges=max_edges,
                           max_payload=max_payload, max_levels=max_levels, context_len=context_len,
                           form_min_count=form_min_count, byte_orders=tuple(byte_orders),
                           attention_heads=attention_heads, word_tokens=word_tokens,
                           embedding_dims=embedding_dims, max_categories=max_categories)
        if not empty and graph_init(&self.g) < 0:
            self._raise("creating the base nodes")

    def __dealloc__(self):
        store_free(&self.g)
        recall_free(&self._recall)
        self._unmap()

    def map_private(self, int fd, size_t size):
        """Map a brain file copy-on-write for import_state, which then uses the records it finds
        inside the mapping in place (written pages become private copies; the file never changes).
        Returns a read-only memoryview of the mapping: valid while this Core lives."""
        cdef void* p
        if self._map != NULL or self.g.n_nodes != 0:
            raise ValueError("map_private needs an empty Core")
        if size == 0:
            raise ValueError("empty file")
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0)
        if p == MAP_FAILED:
            raise OSError("mmap of the brain file failed")
        self._map = p
        self._map_len = size
        self.g.pool.map_lo = <size_t>p
        self.g.pool.map_hi = <size_t>p + size
        return PyMemoryView_FromMemory(<char*>p, size, PyBUF_READ)

    def _mapped_tables(self):
        """Names of the tables that lie in this Core's file mapping (test hook)."""
        cdef GraphC* g = &self.g
        inside = lambda size_t p: g.pool.map_lo <= p < g.pool.map_hi
        return sorted(name for name, p in (("contexts", <size_t>g.ctxs), ("edges", <size_t>g.edges),
                                           ("context_index", <size_t>g.ctx_ix.slots),
                                           ("edge_index", <size_t>g.edge_ix.slots)) if inside(p))

    cdef _unmap(self):
        """Drop the mapping; only once no table lies in it (after store_free)."""
        if self._map != NULL:
            munmap(self._map, self._map_len)
            self._map = NULL
            self.g.pool.map_lo = self.g.pool.map_hi = 0

    cdef _raise(self, str what):
        cdef int err = self.g.pool.err
        self.g.pool.err = ERR_NONE
        if err == ERR_CAP:
            raise CapExceeded(f"max_memory ({self.g.pool.cap} bytes) reached while {what}: "
                              f"{self.g.pool.used} bytes in use, {self.g.pool.err_request} more "
                              f"requested; raise Limits.max_memory")
        if err == ERR_LIMIT:
            raise CapExceeded(f"a count cap was reached while {what} (nodes {self.g.n_nodes}/"
                              f"{self.g.max_nodes}, edges {self.g.n_edges}/{self.g.max_edges}); "
                              f"raise Limits.max_nodes or Limits.max_edges")
        if err == ERR_OVERFLOW:
            raise CapExceeded(f"size overflow while {what}")
        raise MemoryError(f"allocation of {self.g.pool.err_request} bytes failed while {what}")

    # --- learning ----------------------------------------------------------------------------
    def feed(self, data, int port=0):
        cdef int rc
        cdef size_t n
        cdef const uint8_t* p
        cdef const uint8_t[::1] view
        cdef TraceC tr
        if type(data) is bytes:
            # training's case: a memoryview's validation was ~840 instructions per episode
            p = <const uint8_t*>PyBytes_AS_STRING(data)
            n = <size_t>PyBytes_GET_SIZE(data)
        else:
            view = data
            n = view.shape[0]
            p = &view[0] if n else NULL
        trace_reset(&tr)
        with nogil:
            rc = _learn_episode(&self.g, &tr, p, n, <uint8_t>port, NULL, 0, NULL)
        if rc < 0:
            self._raise("feeding")

    def feed_many(self, episodes, int port=0):
        """feed() for each bytes object of the sequence `episodes`, in one call that releases the
        GIL once: training's path (a call per episode, with the reader's step of Python per
        episode, cost ~8% of training on big.txt's 2.2 million lines). An episode that fails is
        left as feed leaves it and ends the call: its error is raised with `learned`, the number
        of episodes learned before it."""
        cdef tuple eps = tuple(episodes)      # holds the bytes while the GIL is released
        cdef Py_ssize_t n = len(eps), i = 0
        cdef int rc = 0
        cdef const uint8_t** ptrs
        cdef size_t* lens
        cdef TraceC trs[2]                    # this episode's, and the next one's being prepared
        for item in eps:
            if type(item) is not bytes:
                raise TypeError(f"feed_many takes bytes episodes, got {type(item).__name__}")
        ptrs = <const uint8_t**>malloc(n * sizeof(uint8_t*) + 1)
        lens = <size_t*>malloc(n * sizeof(size_t) + 1)
        if ptrs == NULL or lens == NULL:
            free(ptrs)
            free(lens)
            raise MemoryError("feed_many: no memory for the episode table")
        for i in range(n):
            ptrs[i] = <const uint8_t*>PyBytes_AS_STRING(eps[i])
            lens[i] = <size_t>PyBytes_GET_SIZE(eps[i])
        trace_reset(&trs[0])
        with nogil:
            for i in range(n):
                rc = _learn_episode(&self.g, &trs[i & 1], ptrs[i], lens[i], <uint8_t>port,
                                    ptrs[i + 1] if i + 1 < n else NULL,
                                    lens[i + 1] if i + 1 < n else 0,
                                    &trs[(i + 1) & 1] if i + 1 < n else NULL)
                if rc < 0:
                    break
        free(ptrs)
        free(lens)
        if rc < 0:
            try:
                self._raise("feeding")
            except Exception as exc:
                exc.learned = i
                raise
        return n

    def associate_pair(self, const uint8_t[::1] a, int pa, const uint8_t[::1] b, int pb):
        """Learn one cross-modal episode: a on port pa, then b on port pb."""
        cdef int rc
        cdef size_t na = a.shape[0], nb = b.shape[0]
        cdef const uint8_t* ap = &a[0] if na else NULL
        cdef const uint8_t* bp = &b[0] if nb else NULL
        cdef uint64_t caps[9]
        caps_snapshot(&self.g, caps)
        with nogil:
            rc = feed_bridge(&self.g, ap, na, <uint8_t>pa, bp, nb, <uint8_t>pb)
            if rc < 0:
                caps_restore(&self.g, caps)
        if rc < 0:
            self._raise("associating")

    def prune(self, size_t target_bytes):
        with nogil:
            prune_to(&self.g, target_bytes, self.g.max_edges, NULL)

    def prune_to(self, size_t target_bytes, uint64_t target_edges):
        with nogil:
            prune_to(&self.g, target_bytes, target_edges, NULL)

    def trim_to(self, uint64_t target_bytes, uint64_t target_edges):
        """Drop least recently used singletons until compact_bytes <= target_bytes and edges <=
        target_edges (aging only when they run out); rebuild compactly afterwards."""
        with nogil:
            trim_to(&self.g, target_bytes, target_edges)

    @property
    def compact_bytes(self):
        """memory_bytes once rebuilt with compact_capacities()."""
        return compact_bytes(&self.g)

    def compact_capacities(self):
        """Capacities for import_state that rebuild this graph with 1/8 spare room (compact_caps);
        compact_bytes is what they take."""
        cdef uint64_t caps[9]
        compact_caps(&self.g, caps)
        return {name: caps[i] for i, name in enumerate(CAPACITY_NAMES)}

    # --- merging -------------------------------------------------------------------------------
    def absorb(self, Core other):
        """Add other's patterns, contexts and edges (melvin.merge); other is unchanged. On failure
        (MemoryError, CapExceeded) this graph is consistent but partly merged."""
        cdef int rc
        if other is self:
            raise ValueError("a graph cannot absorb itself")
        if other.limits["byte_orders"] != self.limits["byte_orders"] or \
                other.limits["context_len"] != self.limits["context_len"]:
            raise ValueError("graphs with different context limits (byte_context, context_len) "
                             "have incompatible contexts and cannot be merged")
        if other.g.max_payload > self.g.max_payload or other.g.max_levels > self.g.max_levels:
            raise ValueError("the graph to absorb allows longer or deeper patterns "
                             "(max_payload, max_levels) than this one")
        with nogil:
            rc = absorb(&self.g, &other.g)
        if rc < 0:
            self._raise("merging")

    def set_caps(self, size_t max_memory, uint32_t max_nodes, uint32_t max_edges):
        """Change the memory and count caps of a graph that already fits them; the peak memory
        restarts from what the graph holds (what it took under other caps is not its history)."""
        if self.g.pool.used > max_memory or self.g.n_nodes > max_nodes or \
                self.g.n_edges > max_edges:
            raise CapExceeded("the graph does not fit the new caps")
        self.g.pool.cap = max_memory
        self.g.max_nodes = max_nodes
        self.g.max_edges = max_edges
        self.g.pool.peak = self.g.pool.used
        self.limits = dict(self.limits, max_memory=max_memory, max_nodes=max_nodes,
                           max_edges=max_edges)

    def shrink(self):
        """Give back unused capacity (best effort)."""
        with nogil:
            shrink_to_fit(&self.g)

    # --- queries -----------------------------------------------------------------------------
    def score_bits(self, const uint8_t[::1] data, int port=0):
        cdef size_t n = data.shape[0]
        cdef const uint8_t* p = &data[0] if n else NULL
        cdef double bits
        with nogil:
            bits = score_episode(&self.g, p, n, <uint8_t>port)
        return bits

    def score_detail(self, const uint8_t[::1] data, int port=0):
        """Per token of one episode: (token id, bits, highest order whose context saw the token
        (0: none), number of orders whose context exists). For evaluation and diagnostics."""
        cdef size_t n = data.shape[0]
        cdef const uint8_t* p = &data[0] if n else NULL
        cdef TraceC tr
        cdef uint32_t cis[MAX_ORDERS]
        cdef uint32_t m, v, length, k, hit, present
        cdef size_t pos = 0
        out = []
        if self.g.port_root[<uint8_t>port] == NONE:
            return out
        trace_reset(&tr)
        while True:
            if pos < n:
                v = match_longest(&self.g, <uint8_t>port, p + pos, n - pos, &length)
            else:
                v = STOP
                length = 0
            m = trace_contexts(&self.g, &tr, cis)
            hit = 0
            present = 0
            for k in range(m):
                if cis[k] != NONE:
                    present += 1
                    if edge_find(&self.g, cis[k], v) != NONE:
                        hit = k + 1
            out.append((v, -np.log2(prob_next(&self.g, &tr, cis, m, v)), hit, present))
            if v == STOP:
                break
            trace_push(&tr, v, MAX_CONTEXT)
            pos += length
        return out

    cdef bytes _payload(self, uint32_t v):
        cdef NodeC* nd = &self.g.nodes[v]
        return (<char*>self.g.arena)[nd.payload_off:nd.payload_off + nd.payload_len]

    cdef list _parse(self, const uint8_t* p, size_t n, uint8_t port, list starts):
        cdef list ids = []
        cdef size_t pos = 0
        cdef uint32_t v, length
        while pos < n:
            v = match_longest(&self.g, port, p + pos, n - pos, &length)
            ids.append(v)
            starts.append(pos)
            pos += length
        return ids

    cdef void _trace_at(self, TraceC* tr, list ids, Py_ssize_t j):
        """The trace the model would have after the first j prompt tokens of an episode. Its
        contexts are those of the same tokens met anywhere in a stream (byte suffixes, tokens)
        and, where the prompt is shorter than a byte context, that context of the prompt as an
        episode's start."""
        cdef Py_ssize_t i, first = j - <Py_ssize_t>ATTN_WINDOW
        trace_reset(tr)
        if first < 0:
            first = 0
        for i in range(first, j):
            trace_push(tr, <uint32_t>ids[i], MAX_CONTEXT)

    cdef uint32_t _gather(self, TraceC* tr, uint32_t* cis, uint32_t m,
                          uint8_t port) except? 0xFFFFFFFF:
        """Generation's candidates into self._recall (recall_gather): every token observed after
        any order of the current context, with its probability under the plain token mixture
        (prob_of with SMOOTH_RECALL), not the spelled, exclusion-renormalised distribution
        predict and score use: the text generation writes is not re-segmented between steps.
        Without the 1-byte context (the first key, when byte_orders starts at 1): it sharpens
        prediction but blurs recall of what followed a longer context (assoc recall 0.900 with
        it, 0.915 without). Without the category context either: recall wants what followed this
        very context, not its category's other members ("recovery works" fed 3 times went on
        " wor th t" with it). Returns how many."""
        cdef uint32_t own[MAX_ORDERS]
        cdef int n
        self._recall_contexts(tr, cis, m, own)
        with nogil:
            n = recall_gather(&self.g, &self._recall, own, m, port)
        if n < 0:
            self._raise("gathering generation's candidates")
        return <uint32_t>n

    cdef void _recall_contexts(self, TraceC* tr, uint32_t* cis, uint32_t m, uint32_t* own):
        """The contexts generation weighs (see _gather): cis without the 1-byte and category
        ones."""
        cdef uint32_t k
        memcpy(own, cis, m * sizeof(uint32_t))
        if m and self.g.n_byte_orders and self.g.byte_orders[0] == 1:
            own[0] = NONE
        for k in range(m):
            if tr.kinds[k] == KIND_CAT:
                own[k] = NONE

    def _recall_step(self, const uint8_t[::1] prompt, int port=0):
        """Test hook: generation's candidates after the whole prompt (no healing) as
        ({token: probability} gathered in one walk, {token: prob_of of each}), and the greedy
        choice with its probability ((None, 0.0) if none)."""
        cdef TraceC tr
        cdef uint32_t cis[MAX_ORDERS]
        cdef uint32_t own[MAX_ORDERS]
        cdef uint32_t m, best
        cdef double bp = 0.0
        cdef list starts = []
        cdef size_t n = prompt.shape[0]
        ids = self._parse(&prompt[0] if n else NULL, n, <uint8_t>port, starts)
        self._trace_at(&tr, ids, len(ids))
        m = trace_contexts(&self.g, &tr, cis)
        cand = self._candidates(&tr, cis, m, <uint8_t>port)     # (gathered into self._recall)
        self._recall_contexts(&tr, cis, m, own)
        reference = {d: prob_of(&self.g, own, m, d, &SMOOTH_RECALL) for d in cand}
        best = recall_best(&self.g, &self._recall, <uint8_t>port, &bp)
        if self.g.pool.err:
            self._raise("generating")
        return cand, reference, (None if best == NONE else best), bp

    cdef dict _candidates(self, TraceC* tr, uint32_t* cis, uint32_t m, uint8_t port,
                          const uint8_t[::1] rest=None, bint strict=False):
        """_gather's candidates as {token: probability}; with rest, only the tokens whose payload
        starts with it (strict: and is longer), never STOP."""
        cdef uint32_t i, d, n = self._gather(tr, cis, m, port)
        cdef uint32_t len_r = rest.shape[0] if rest is not None else 0
        cdef NodeC* nd
        cdef dict out = {}
        for i in range(n):
            d = self._recall.ids[i]
            if rest is not None:
                nd = &self.g.nodes[d]
                if d == STOP or nd.payload_len < len_r or (strict and nd.payload_len == len_r) or \
                        (len_r and memcmp(self.g.arena + nd.payload_off, &rest[0], len_r) != 0):
                    continue
            out[d] = self._recall.p[d]
        return out

    cdef double _recency(self, uint16_t stamp) noexcept nogil:
        """Edges remember their last use (in units of 65,536 learned tokens); older evidence
        counts half as much every 64 units."""
        cdef uint16_t now = <uint16_t>(self.g.tokens_fed >> 16)
        return pow(2.0, -(<uint16_t>(now - stamp)) / 64.0)

    def after(self, const uint8_t[::1] pattern, int k=5, int port=0):
        """What usually follows the pattern: the continuations learned patterns give its tail (as
        generation's first step sees them), weighted by probability and the recency of their
        edges, normalised to sum to 1. The pattern is read as prompts are (_trace_at): met
        anywhere in a stream, and also as an episode's start when it began some. With update
        exclusion a pattern that always begins its episodes teaches only its from-the-start
        context, so "first then" (learned at the start of "first then second then third") was
        answered by " then"'s three successors alike when read mid-stream only."""
        cdef TraceC tr
        cdef uint32_t cis[MAX_ORDERS]
        cdef uint32_t m, e, i
        cdef list starts = []
        cdef size_t n = pattern.shape[0]
        if self.g.port_root[<uint8_t>port] == NONE or n == 0:
            return []
        ids = self._parse(&pattern[0], n, <uint8_t>port, starts)
        # strict: a token spelling exactly the pattern's tail would continue it with nothing
        cand, rest_len = self._heal(&tr, pattern, ids, starts, <uint8_t>port, True)
        if not cand:
            self._trace_at(&tr, ids, len(ids))
            m = trace_contexts(&self.g, &tr, cis)
            cand = {d: pr for d, pr in self._candidates(&tr, cis, m, <uint8_t>port).items()
                    if d != STOP}
            rest_len = 0
        else:
            m = trace_contexts(&self.g, &tr, cis)
        # Recency: each candidate's most recent use in any of these contexts.
        recent = {}
        for i in range(m):
            if cis[i] == NONE:
                continue
            e = self.g.ctxs[cis[i]].head
            while e != NONE:
                if self.g.edges[e].dst in cand:
                    r = self._recency(self.g.edges[e].stamp)
                    recent[self.g.edges[e].dst] = max(recent.get(self.g.edges[e].dst, 0.0), r)
                e = self.g.edges[e].next
        weights = {d: pr * recent.get(d, 1.0) for d, pr in cand.items()}
        total = sum(weights.values())
        if not total:
            return []
        ranked = sorted(weights.items(), key=lambda kv: (-kv[1], self._tie_key(kv[0])))[:k]
        return [(self._payload(v)[rest_len:], w / total) for v, w in ranked]

    def before(self, const uint8_t[::1] pattern, int k=5, int port=0):
        """What usually precedes the pattern (its first token if it is not one pattern): the
        tokens whose edges lead to it, weighted by count and recency, normalised to sum to 1.
        With word patterns a word mid-text carries its leading space, so on the text port
        "second" also counts what precedes " second"."""
        cdef size_t n = pattern.shape[0]
        cdef const uint8_t* p = &pattern[0] if n else NULL
        cdef uint32_t v, u, ci, e, length
        if self.g.port_root[<uint8_t>port] == NONE or n == 0:
            return []
        v = self._node_of(bytes(pattern), <uint8_t>port) if n <= 0xFFFF else NONE
        if v == NONE:
            v = match_longest(&self.g, <uint8_t>port, p, n, &length)
        targets = {v}
        if port == 0 and self.g.word_tokens and p[0] != 32 and n < 0xFFFF:
            v = self._node_of(b" " + bytes(pattern), <uint8_t>port)
            if v != NONE:
                targets.add(v)
        cdef uint32_t tv[2]
        cdef uint32_t nt = 0, found = 0, i
        cdef uint32_t nn = self.g.n_nodes
        cdef uint64_t cap = self.g.ctx_ix.capacity
        cdef double w
        cdef bint hit
        for v in targets:
            tv[nt] = v
            nt += 1
        cdef uint32_t* us = <uint32_t*>malloc((<size_t>nn + 1) * sizeof(uint32_t))
        cdef double* ws = <double*>malloc((<size_t>nn + 1) * sizeof(double))
        cdef uint32_t* own = <uint32_t*>malloc((<size_t>nn + 1) * sizeof(uint32_t))
        if us == NULL or ws == NULL or own == NULL:
            free(us)
            free(ws)
            free(own)
            raise MemoryError("allocation failed while finding predecessors")
        try:
            # Every token's own context, then its edges to the targets: a pass of lookups each,
            # with what the lookups 16 and 8 ahead will read in flight (a Python loop of probes
            # took ~0.1 s on a brain of 238K nodes).
            with nogil:
                for u in range(nn):
                    if cap and u + 16 < nn:
                        prefetch(&self.g.ctx_ix.slots[fastrange(
                            ctx_key_first(self.g.nodes[u + 16].key), cap)])
                    if u + 8 < nn:
                        ci = ix_candidate(&self.g.ctx_ix, ctx_key_first(self.g.nodes[u + 8].key))
                        if ci != NONE:
                            prefetch(&self.g.ctxs[ci])
                    own[u] = NONE
                    if u != STOP and self.g.nodes[u].payload_len:
                        own[u] = ctx_find(&self.g, ctx_key_first(self.g.nodes[u].key))
                for u in range(nn):
                    if u + 16 < nn and own[u + 16] != NONE:
                        prefetch(&self.g.ctxs[own[u + 16]])
                    if u + 8 < nn and own[u + 8] != NONE:
                        ci = own[u + 8]           # a sole edge is not indexed: its list has it
                        if self.g.ctxs[ci].distinct < 2:
                            if self.g.ctxs[ci].head != NONE:
                                prefetch(&self.g.edges[self.g.ctxs[ci].head])
                        elif self.g.edge_ix.capacity:
                            prefetch(&self.g.edge_ix.slots[fastrange(edge_hash(ci, tv[0]),
                                                                     self.g.edge_ix.capacity)])
                    ci = own[u]
                    if ci == NONE:
                        continue
                    w = 0.0
                    hit = False
                    for i in range(nt):
                        e = edge_find(&self.g, ci, tv[i])
                        if e != NONE:
                            w = w + self.g.edges[e].count * self._recency(self.g.edges[e].stamp)
                            hit = True
                    if hit:
                        us[found] = u
                        ws[found] = w
                        found += 1
            weights = {us[i]: ws[i] for i in range(found)}
        finally:
            free(us)
            free(ws)
            free(own)
        if not weights:
            return []
        total = sum(weights.values())
        ranked = sorted(weights.items(), key=lambda kv: (-kv[1], self._tie_key(kv[0])))[:k]
        return [(self._payload(u), w / total) for u, w in ranked]

    def predict(self, const uint8_t[::1] prompt, int k=5, int port=0):
        """The k most probable next tokens under prob_next, exactly: a best-first walk of the
        trie, one spelling step at a time (a prefix is at least as probable as every token
        below it), so tokens never seen in this context but spelled like ones that were rank
        where they belong."""
        cdef size_t n = prompt.shape[0]
        cdef const uint8_t* p = &prompt[0] if n else NULL
        cdef TraceC tr
        cdef uint32_t cis[MAX_ORDERS]
        cdef uint32_t m, v, x
        cdef double step[257]
        cdef uint32_t vals[ATTN_WINDOW]
        cdef uint32_t n_vals, i
        cdef const uint8_t* q
        cdef list starts = []
        cdef bytes item
        if k <= 0 or self.g.port_root[<uint8_t>port] == NONE:
            return []
        ids = self._parse(p, n, <uint8_t>port, starts)
        self._trace_at(&tr, ids, len(ids))
        m = trace_contexts(&self.g, &tr, cis)
        heap = [(-1.0, 0, b"", 0)]          # (-probability, 0 prefix / 1 token, bytes, id)
        found = []
        while heap and (len(found) < k or -heap[0][0] >= found[len(found) - 1][0]):
            negp, kind, item, v = heapq.heappop(heap)
            if kind == 1:
                found.append((-negp, v))
                continue
            q = item
            if spell_step(&self.g, tr.ids[0], cis, tr.kinds, m, <uint8_t>port, q, len(item),
                          step) < 0:
                if self.g.pool.err:
                    self._raise("predicting")
                continue
            for x in range(257):
                if step[x] <= 0.0:
                    continue
                if x < 256:
                    heapq.heappush(heap, (negp * step[x], 0, item + bytes((x,)), 0))
                else:
                    v = STOP if not item else self._node_of(item, <uint8_t>port)
                    heapq.heappush(heap, (negp * step[x], 1, item, v))
        n_vals = attn_values(&self.g, &tr, vals)
        if n_vals:
            # The heads only add mass to the window's tokens and scale the rest alike, so the top
            # k of the mixture are among the graph's top k and the window.
            cand = {v for _, v in found}
            for i in range(n_vals):
                if vals[i] != NONE:
                    cand.add(vals[i])
            found = [(prob_attended(&self.g, &tr, cis, m, vals, n_vals, v), v) for v in cand]
        ranked = sorted(found, key=lambda pv: (-pv[0], self._tie_key(pv[1])))[:k]
        return [(b"" if v == STOP else self._payload(v), prob) for prob, v in ranked]

    cdef uint32_t _node_of(self, bytes payload, uint8_t port):
        cdef const uint8_t* p = payload
        cdef uint32_t n = len(payload)
        return node_find(&self.g, node_key(poly_bytes(p, n), port, n), p, n, port)

    cdef bint _embedding_of(self, bytes pattern, uint8_t port, EmbC* out):
        """The pattern's node's embedding (False if it is no node or has no successors)."""
        cdef uint32_t v
        out.n = 0
        if self.g.port_root[port] == NONE or not 0 < len(pattern) <= 0xFFFF or self.g.emb_dims == 0:
            return False
        v = self._node_of(pattern, port)
        if v == NONE:
            return False
        embed_ctx(&self.g, ctx_find(&self.g, ctx_key_first(self.g.nodes[v].key)), out)
        return out.n > 0

    def embedding(self, bytes pattern, int port=0):
        """{successor payload: weight} of the pattern's embedding ({} if none)."""
        cdef EmbC e
        cdef uint32_t i
        if not self._embedding_of(pattern, <uint8_t>port, &e):
            return {}
        return {self._payload(e.dims[i]): float(e.w[i]) for i in range(e.n)}

    def similarity(self, bytes a, bytes b, int port=0):
        cdef EmbC ea, eb
        if not self._embedding_of(a, <uint8_t>port, &ea) or \
                not self._embedding_of(b, <uint8_t>port, &eb):
            return 0.0
        return emb_cosine(&ea, &eb)

    def category(self, bytes pattern, int port=0):
        """The payloads of the pattern's category's members, most seen first (None if it has
        no category)."""
        cdef uint32_t v, c
        if self.g.port_root[<uint8_t>port] == NONE or not 0 < len(pattern) <= 0xFFFF:
            return None
        v = self._node_of(pattern, <uint8_t>port)
        if v == NONE or self.g.nodes[v].cat == 0:
            return None
        c = self.g.nodes[v].cat
        members = [u for u in range(self.g.n_nodes) if self.g.nodes[u].cat == c]
        members.sort(key=lambda u: (-self.g.nodes[u].count, self._tie_key(u)))
        return [self._payload(u) for u in members]

    def distribution(self, const uint8_t[::1] prompt, int port=0):
        """The full next-token distribution after the prompt, indexed by node id (for tests)."""
        cdef size_t n = prompt.shape[0]
        cdef const uint8_t* p = &prompt[0] if n else NULL
        cdef TraceC tr
        cdef uint32_t cis[MAX_ORDERS]
        cdef uint32_t m, v, n_vals
        cdef uint32_t vals[ATTN_WINDOW]
        cdef list starts = []
        ids = self._parse(p, n, <uint8_t>port, starts)
        self._trace_at(&tr, ids, len(ids))
        m = trace_contexts(&self.g, &tr, cis)
        n_vals = attn_values(&self.g, &tr, vals)
        cdef cnp.ndarray[cnp.float64_t, ndim=1] dist = np.empty(self.g.n_nodes, dtype=np.float64)
        for v in range(self.g.n_nodes):
            dist[v] = prob_attended(&self.g, &tr, cis, m, vals, n_vals, v)
        return dist

    cdef tuple _heal(self, TraceC* tr, const uint8_t[::1] prompt, list ids, list starts,
                     uint8_t port, bint strict=False):
        """Re-read the prompt's tail: for the earliest token boundary whose remaining bytes
        (at most max_payload) some observed successor extends (strict: by at least one byte),
        return those successors with their probabilities and the length of the remainder; tr is
        left at that boundary. ({}, 0) if no learned pattern continues the tail."""
        cdef uint32_t cis[MAX_ORDERS]
        cdef uint32_t m, s
        cdef Py_ssize_t i, j, n = prompt.shape[0]
        cdef Py_ssize_t first = bisect.bisect_left(starts, n - self.g.max_payload
                                                   if n > <Py_ssize_t>self.g.max_payload else 0)
        for j in range(first, len(ids)):
            # Only a remainder that some pattern of the port starts with (strict: and extends) can
            # be continued: the trie tells, so most boundaries are passed without gathering the
            # successors of their contexts (thousands each in a big brain).
            s = self.g.port_root[port]
            i = starts[j]
            while s != NONE and i < n:
                s = trie_step(&self.g, s, prompt[i])
                i += 1
            if s == NONE or (strict and self.g.trie[s].first_child == NONE):
                continue
            self._trace_at(tr, ids, j)
            m = trace_contexts(&self.g, tr, cis)
            cand = self._candidates(tr, cis, m, port, prompt[starts[j]:], strict)
            if cand:
                return cand, n - starts[j]
        return {}, 0

    def generate(self, const uint8_t[::1] prompt, int port=0, size_t max_bytes=256,
                 double min_confidence=0.0, int out_port=-1, double stop_ratio=0.0):
        """Greedy continuation. The prompt's last tokens are re-read ("healed"): the longest prompt
        suffix that a learned token extends, in the context before it, decides the first step, so
        a prompt that ends inside a learned pattern continues that pattern. Returns (bytes, [conf])."""
        cdef size_t n = prompt.shape[0]
        cdef const uint8_t* p = &prompt[0] if n else NULL
        cdef TraceC tr
        cdef uint32_t cis[MAX_ORDERS]
        cdef uint32_t m, v, best
        cdef Py_ssize_t j, ntok
        cdef double total, bp
        cdef list starts = []
        out = bytearray()
        confidences = []
        if self.g.port_root[<uint8_t>port] == NONE or max_bytes == 0:
            return bytes(out), confidences
        ids = self._parse(p, n, <uint8_t>port, starts)
        ntok = len(ids)
        healed = False
        if out_port >= 0 and out_port != port:
            # Cross-modal recall: the prompt, then the target port's marker, then that port.
            if self.g.port_marker[<uint8_t>out_port] == NONE:
                return bytes(out), confidences
            self._trace_at(&tr, ids, ntok)
            trace_push(&tr, self.g.port_marker[<uint8_t>out_port], MAX_CONTEXT)
            port = out_port
            healed = True
            ntok = 0                      # no healing across ports
        if ntok:
            cand, rest_len = self._heal(&tr, prompt, ids, starts, <uint8_t>port)
            if cand:
                best, bp = min(cand.items(), key=lambda kv: (-kv[1], self._tie_key(kv[0])))
                out += self._payload(best)[rest_len:]
                confidences.append(bp / sum(cand.values()))
                trace_push(&tr, best, MAX_CONTEXT)
                healed = True
        if not healed:
            self._trace_at(&tr, ids, len(ids))
        seen = set()
        log_sum = 0.0
        for c in confidences:
            log_sum += math.log(max(c, 1e-300))
        while len(out) < max_bytes:
            m = trace_contexts(&self.g, &tr, cis)
            # The contexts found are all the next step depends on: meeting the same ones again
            # means greedy decoding would loop forever.
            state = tuple(cis[i] for i in range(m))
            if state in seen:
                break
            seen.add(state)
            if self._gather(&tr, cis, m, <uint8_t>port) == 0:
                break
            best = recall_best(&self.g, &self._recall, <uint8_t>port, &bp)
            if best == NONE:
                if self.g.pool.err:
                    self._raise("generating")
                break
            if best == STOP or bp < min_confidence:
                break
            # Adaptive stop: a step far less certain than this generation has been so far (the
            # geometric mean of its confidences) means the memorised or predictable part ended.
            if stop_ratio > 0.0 and confidences and \
                    bp < stop_ratio * math.exp(log_sum / len(confidences)):
                break
            log_sum += math.log(max(bp, 1e-300))
            out += self._payload(best)
            confidences.append(bp)
            trace_push(&tr, best, MAX_CONTEXT)
        return bytes(out[:max_bytes]), confidences

    # --- introspection -----------------------------------------------------------------------
    def node_counts(self):
        cdef cnp.ndarray[cnp.uint32_t, ndim=1] out = np.empty(self.g.n_nodes, dtype=np.uint32)
        cdef uint32_t v
        for v in range(self.g.n_nodes):
            out[v] = self.g.nodes[v].count
        return out

    def _tie_key(self, uint32_t v):
        """Equal probabilities are ordered by (payload, port), never by id, so graphs holding the
        same patterns under different ids (merged, reloaded) decide identically."""
        return (self._payload(v), self.g.nodes[v].port)

    def node_payload(self, uint32_t v):
        if v >= self.g.n_nodes:
            raise IndexError(v)
        return self._payload(v)

    def node_port(self, uint32_t v):
        if v >= self.g.n_nodes:
            raise IndexError(v)
        return self.g.nodes[v].port

    def stats(self):
        cdef uint32_t v, embedded = 0
        levels = {}
        for v in range(self.g.n_nodes):
            if self.g.nodes[v].level > 0:
                levels[self.g.nodes[v].level] = levels.get(self.g.nodes[v].level, 0) + 1
            if self.g.nodes[v].cat:
                embedded += 1
        return dict(
            nodes=self.g.n_nodes, contexts=self.g.n_ctxs, edges=self.g.n_edges,
            trie_states=self.g.n_trie, payload_bytes=self.g.n_arena,
            hierarchy_nodes=sum(levels.values()), hierarchy_levels=dict(sorted(levels.items())),
            memory_bytes=self.g.pool.used, peak_memory_bytes=self.g.pool.peak,
            bytes_fed=self.g.bytes_fed, tokens_fed=self.g.tokens_fed, episodes=self.g.episodes,
            formed=self.g.formed, pruned_nodes=self.g.pruned_nodes, pruned_edges=self.g.pruned_edges,
            pruned_contexts=self.g.pruned_ctxs, prunes=self.g.prunes,
            ports=sum(1 for i in range(256) if self.g.port_root[i] != NONE),
            attention_heads=self.g.attn_heads,
            categories=self.g.n_cats, categorized_nodes=embedded,
        )

    # --- test hooks --------------------------------------------------------------------------
    def _set_fail_at(self, int64_t k):
        """Make allocation attempt number k (counted from now, 1-based) fail; -1 disables."""
        self.g.pool.fail_at = -1 if k < 0 else self.g.pool.n_allocs + k

    @property
    def _alloc_attempts(self):
        return self.g.pool.n_allocs

    @property
    def _excl_held(self):
        """Busy contexts whose sorted successors the scoring scratch holds (tests)."""
        return self.g.excl.n_ctx

    def _excl_ids(self):
        """Successor ids the scoring scratch holds, of at most EXCL_MAX_IDS (tests, benchmarks)."""
        return self.g.excl.used_ids

    # --- invariants --------------------------------------------------------------------------
    def check(self, bint full=True):
        """Raise InvariantError unless every structure is consistent. full=False checks what a
        file supplies -- payloads, components, base nodes, duplicate patterns, contexts and
        edges, ids -- and skips what the loader rebuilt from them itself (the trie and its
        aggregates, the successor lists and totals): about a quarter of the time on big brains,
        where the trie walk per pattern dominates. The fuzzers run the full check on every brain
        that loads."""
        return self._check(full, False)

    cdef _check(self, bint full, bint loaded):
        """check(); loaded (the check of a brain just loaded) skips finding every node, context
        and edge through its index (half of a big brain's check): loading indexes them itself,
        refusing repeats on the way, so each is found by construction. It also skips the edge
        records' ids and counts, which the loader validated as it decoded them."""
        cdef GraphC* g = &self.g
        cdef uint32_t v, c, e, steps, s, state, j
        cdef uint64_t total, counts = 0
        cdef NodeC* nd
        cdef NodeC* a
        cdef NodeC* b
        if g.pool.used != store_accounted(g):
            raise InvariantError(f"pool accounts {g.pool.used} bytes, structures hold {store_accounted(g)}")
        if g.pool.used > g.pool.cap:
            raise InvariantError("memory above max_memory")
        if g.n_nodes > g.cap_nodes or g.n_ctxs > g.cap_ctxs or g.n_edges > g.cap_edges \
                or g.n_trie > g.cap_trie or g.n_arena > g.cap_arena:
            raise InvariantError("a length exceeds its capacity")
        if g.n_nodes > g.max_nodes or g.n_edges > g.max_edges:
            raise InvariantError("a count cap is exceeded")
        for name, mask, cap in (("node", g.node_ix.mask, g.node_ix.capacity),
                                ("context", g.ctx_ix.mask, g.ctx_ix.capacity),
                                ("edge", g.edge_ix.mask, g.edge_ix.capacity),
                                ("trie", g.trie_ix.mask, g.trie_ix.capacity)):
            if mask != ix_mask(cap):
                raise InvariantError(f"the {name} index's position mask {mask:#x} does not match "
                                     f"its capacity {cap}")
        if g.n_nodes < N_BASE or g.nodes[STOP].payload_len != 0:
            raise InvariantError("base nodes missing")
        for v in range(256):
            nd = &g.nodes[v]
            if nd.payload_len != 1 or nd.port != 0 or g.arena[nd.payload_off] != v or nd.level != 0:
                raise InvariantError(f"byte node {v} damaged")
        if g.n_cats > g.cap_cats or g.n_cats > 0xFFFF:
            raise InvariantError("more categories than their table holds")
        for c in range(g.n_cats):
            if g.cats[c].n > g.emb_dims or (g.cats[c].top == NONE) != (g.cats[c].n == 0):
                raise InvariantError(f"category {c + 1} has a damaged profile")
            for j in range(g.cats[c].n):
                if g.cat_dims[<uint64_t>c * g.emb_dims + j] >= g.n_nodes:
                    raise InvariantError(f"category {c + 1} names a missing node")
        for v in range(g.n_nodes):
            nd = &g.nodes[v]
            counts += nd.count
            if nd.cat > g.n_cats or (nd.cat and nd.payload_len == 0):
                raise InvariantError(f"node {v} names category {nd.cat} of {g.n_cats}")
            if <uint64_t>nd.payload_off + nd.payload_len > g.n_arena:
                raise InvariantError(f"node {v} payload outside the arena")
            if nd.payload_len > g.max_payload or nd.level > g.max_levels:
                raise InvariantError(f"node {v} exceeds max_payload/max_levels")
            if nd.poly != (poly_bytes(g.arena + nd.payload_off, nd.payload_len)
                           if nd.payload_len or v == STOP else MARKER_POLY()) or \
                    nd.key != node_key(nd.poly, nd.port, nd.payload_len):
                raise InvariantError(f"node {v} key does not match its payload")
            if v == STOP:
                continue
            if nd.payload_len == 0:
                if g.port_marker[nd.port] != v or nd.level != 0 or nd.state != NONE:
                    raise InvariantError(f"node {v} has an empty payload but is no port marker")
                continue
            if (nd.level == 0) != (nd.payload_len == 1):
                raise InvariantError(f"node {v} level/length mismatch")
            if nd.left != NONE:
                if nd.left >= v or nd.right == NONE or nd.right >= v:
                    raise InvariantError(f"node {v} components are not earlier nodes")
                a = &g.nodes[nd.left]
                b = &g.nodes[nd.right]
                if a.payload_len + b.payload_len != nd.payload_len or \
                        memcmp(g.arena + a.payload_off, g.arena + nd.payload_off, a.payload_len) or \
                        memcmp(g.arena + b.payload_off, g.arena + nd.payload_off + a.payload_len,
                               b.payload_len):
                    raise InvariantError(f"node {v} payload is not left+right")
            if not full:
                continue
            # the trie leads to it: from the root, or (by induction, components come first and
            # were checked already) on from the left component's state
            state = g.port_root[nd.port]
            if state == NONE:
                raise InvariantError(f"port {nd.port} has nodes but no trie root")
            j = 0
            if nd.left != NONE and g.nodes[nd.left].state != NONE and g.nodes[nd.left].port == nd.port:
                state = g.nodes[nd.left].state
                j = g.nodes[nd.left].payload_len
            while j < nd.payload_len:
                state = trie_child(g, state, g.arena[nd.payload_off + j])
                j += 1
                if state == NONE:
                    raise InvariantError(f"trie path of node {v} broken")
            if g.trie[state].node != v or nd.state != state:
                raise InvariantError(f"trie does not end at node {v}")
        if not loaded:
            with nogil:
                v = _first_node_not_found(g)
            if v != NONE:
                raise InvariantError(f"node {v} not found by its key (or duplicated)")
        for j in range(256):
            state = g.port_root[j]
            if state == NONE:
                continue
            for s in range(256):
                v = trie_child(g, state, s)
                if v == NONE or g.trie[v].node == NONE or g.nodes[g.trie[v].node].payload_len != 1:
                    raise InvariantError(f"port {j} lacks the byte node {s}")
        if counts != g.total_count:
            raise InvariantError("total_count differs from the node counts")
        if g.total_count + g.n_nodes >= 0xFFFFFFFFu:
            raise InvariantError("counts too large for the trie aggregates")
        if not full:
            return self._check_contexts_and_edges(False, loaded)
        agg_arr = np.zeros(g.n_trie, dtype=np.uint64)
        cdef uint64_t[::1] agg = agg_arr          # typed: C indexing, not Python's per element
        for v in range(g.n_nodes):
            s = g.nodes[v].state
            while s != NONE and v != STOP:
                if s >= g.n_trie:
                    raise InvariantError(f"node {v} trie path leaves the trie")
                agg[s] += g.nodes[v].count + 1
                s = g.trie[s].parent
        for s in range(g.n_trie):
            if agg[s] != g.trie[s].agg:
                raise InvariantError(f"trie state {s} aggregate is stale")
        for s in range(g.n_trie):
            if g.trie[s].node != NONE and g.trie[s].node >= g.n_nodes:
                raise InvariantError(f"trie state {s} names a missing node")
            if g.trie[s].parent != NONE and g.trie[s].parent >= s:
                raise InvariantError(f"trie state {s} parent is not earlier")
        # every state is on its parent's child list, and `branching` says whether a list has two
        # or more (the walk trusts it: a wrong flag would skip a child)
        kids_arr = np.zeros(g.n_trie, dtype=np.uint32)
        cdef uint32_t[::1] kids = kids_arr
        for s in range(g.n_trie):
            if g.trie[s].parent != NONE:
                kids[g.trie[s].parent] += 1
        for s in range(g.n_trie):
            j = 0
            v = g.trie[s].first_child
            while v != NONE and j <= kids[s]:
                if v >= g.n_trie or g.trie[v].parent != s:
                    raise InvariantError(f"trie state {s} lists a child that is not its own")
                j += 1
                v = g.trie[v].next_sibling
            if j != kids[s] or v != NONE:
                raise InvariantError(f"trie state {s} child list does not hold its {kids[s]} children")
            if g.trie[s].branching != (kids[s] >= 2):
                raise InvariantError(f"trie state {s} branching flag is wrong")
        return self._check_contexts_and_edges(True, loaded)

    cdef _check_contexts_and_edges(self, bint lists, bint loaded):
        """check()'s contexts and edges; loaded: see _check."""
        cdef GraphC* g = &self.g
        cdef uint32_t c, e, j, steps = 0
        cdef uint64_t total
        cdef uint32_t[::1] found
        if not loaded:
            found_arr = np.empty(g.n_ctxs, dtype=np.uint32)
            found = found_arr
            if g.n_ctxs:
                with nogil:
                    ctx_find_many(g, g.ctxs, g.n_ctxs, &found[0])
            bad = np.flatnonzero(found_arr != np.arange(g.n_ctxs, dtype=np.uint32))
            if len(bad):
                raise InvariantError(f"context {bad[0]} not found by its key (or duplicated)")
        for c in range(g.n_ctxs if lists else 0):
            total = 0
            j = 0
            e = g.ctxs[c].head
            while e != NONE:
                if e >= g.n_edges or g.edges[e].ctx != c:
                    raise InvariantError(f"context {c} successor list is broken")
                if g.edges[e].count == 0:
                    raise InvariantError(f"edge {e} has a zero count")
                total += g.edges[e].count
                j += 1
                steps += 1
                if steps > g.n_edges:
                    raise InvariantError("successor lists share edges or loop")
                e = g.edges[e].next
            if total != g.ctxs[c].total or j != g.ctxs[c].distinct:
                raise InvariantError(f"context {c} totals disagree with its edges")
        if lists and steps != g.n_edges:
            raise InvariantError("some edges are in no successor list")
        for e in range(0 if loaded else g.n_edges):
            if g.edges[e].dst >= g.n_nodes or g.edges[e].ctx >= g.n_ctxs:
                raise InvariantError(f"edge {e} names a missing node or context")
            if g.edges[e].count == 0:
                raise InvariantError(f"edge {e} has a zero count")
        if not loaded:
            with nogil:
                e = _first_edge_not_found(g)
            if e != NONE:
                raise InvariantError(f"edge {e} not found by (ctx, dst) (or duplicated)")
        return True

    # --- persistence support -------------------------------------------------------------------
    def node_keys(self):
        """The 64-bit identity of every node (derived from port and payload; merge unifies by it)."""
        cdef cnp.ndarray[cnp.uint64_t, ndim=1] out = np.empty(self.g.n_nodes, dtype=np.uint64)
        cdef uint32_t v
        for v in range(self.g.n_nodes):
            out[v] = self.g.nodes[v].key
        return out

    def export_counts(self):
        """Record counts, counters and capacities (what the brain file's meta section holds)."""
        return dict(nodes=self.g.n_nodes, contexts=self.g.n_ctxs, edges=self.g.n_edges,
                    arena=self.g.n_arena, categories=self.g.n_cats)

    def mapped_order(self):
        """Format 4's numbering (store.mapped_order) for export_raw: the contexts' order and
        rank, the edges' order and rank, and the edge index of that numbering: 8 bytes per
        context and per edge, and a copy of the edge index, of transient memory while a save
        streams."""
        cdef GraphC* g = &self.g
        cdef cnp.uint32_t[::1] co, cr, o, r, slots
        ctx_order = np.empty(g.n_ctxs + 1, dtype=np.uint32)
        ctx_rank = np.empty(g.n_ctxs + 1, dtype=np.uint32)
        order = np.empty(g.n_edges + 1, dtype=np.uint32)
        rank = np.empty(g.n_edges + 1, dtype=np.uint32)
        edge_index = np.empty(g.edge_ix.capacity + 1, dtype=np.uint32)
        co, cr, o, r, slots = ctx_order, ctx_rank, order, rank, edge_index
        with nogil:
            mapped_order(g, &co[0], &cr[0], &o[0], &r[0])
            mapped_edge_index(g, &o[0], &cr[0], &slots[0])
        return (ctx_order[:g.n_ctxs], ctx_rank[:g.n_ctxs], order[:g.n_edges], rank[:g.n_edges],
                edge_index[:g.edge_ix.capacity])

    def export_raw(self, str kind, uint64_t start, uint64_t stop, numbering):
        """Records [start, stop) of "contexts", "edges", "context_index" or "edge_index" as the
        core holds them, renumbered by mapped_order() (numbering): format 4, which a save
        streams in chunks. Little-endian hosts only."""
        cdef GraphC* g = &self.g
        cdef const cnp.uint32_t[::1] co, cr, o, r, slots_new
        cdef uint64_t n, i
        cdef uint32_t s, mask
        cdef CtxC* xs
        cdef EdgeC* es
        cdef uint32_t* slots
        if not RAW_IN_PLACE:               # pragma: no cover - big-endian hosts
            raise NotImplementedError("format 4 is written on little-endian hosts only")
        co, cr, o, r, slots_new = numbering
        if len(co) != g.n_ctxs or len(o) != g.n_edges or len(slots_new) != g.edge_ix.capacity:
            raise ValueError("numbering must come from mapped_order() of this state")
        n = {"contexts": g.n_ctxs, "edges": g.n_edges, "context_index": g.ctx_ix.capacity,
             "edge_index": g.edge_ix.capacity}[kind]
        stop = min(stop, n)
        if stop <= start:
            return b""
        if kind == "contexts":
            out = np.empty(stop - start, CTX_RAW_DTYPE)
            xs = <CtxC*>cnp.PyArray_DATA(out)
            for i in range(stop - start):
                xs[i] = g.ctxs[co[start + i]]
                if xs[i].head != NONE:
                    xs[i].head = r[xs[i].head]
        elif kind == "edges":
            out = np.empty(stop - start, EDGE_RAW_DTYPE)
            es = <EdgeC*>cnp.PyArray_DATA(out)
            for i in range(stop - start):
                es[i] = g.edges[o[start + i]]
                es[i].ctx = cr[es[i].ctx]
                es[i].next = NONE if es[i].next == NONE else <uint32_t>(start + i - 1)
        else:
            out = np.empty(stop - start, np.uint32)
            slots = <uint32_t*>cnp.PyArray_DATA(out)
            if kind == "edge_index":
                memcpy(slots, &slots_new[start], (stop - start) * sizeof(uint32_t))
            else:
                mask = g.ctx_ix.mask
                for i in range(stop - start):
                    s = g.ctx_ix.slots[start + i]
                    slots[i] = (s & ~mask) | (cr[ix_value(s, mask)] + 1) if s else 0
        return out.tobytes()

    def export_range(self, str kind, uint32_t start, uint32_t stop):
        """Records [start, stop) of "nodes", "contexts" or "edges" in their file layout, or the
        payload bytes of "arena": lets a save stream a brain in bounded chunks."""
        cdef GraphC* g = &self.g
        if kind == "arena":
            stop = min(stop, g.n_arena)
            return bytes((<char*>g.arena)[start:stop]) if stop > start else b""
        if kind == "nodes":
            stop = min(stop, g.n_nodes)
            out = np.zeros(max(stop, start) - start, dtype=NODE_DTYPE)
        elif kind == "contexts":
            stop = min(stop, g.n_ctxs)
            out = np.zeros(max(stop, start) - start, dtype=CTX_DTYPE)
        elif kind == "edges":
            stop = min(stop, g.n_edges)
            out = np.zeros(max(stop, start) - start, dtype=EDGE_DTYPE)
        elif kind == "categories":
            stop = min(stop, g.n_cats)
            return self._export_cats(start, stop)
        else:
            raise ValueError(f"unknown kind {kind!r}")
        if stop > start:
            if kind == "nodes":
                self._fill_nodes(out, start, stop)
            elif kind == "contexts":
                self._fill_ctxs(out, start, stop)
            else:
                self._fill_edges(out, start, stop)
        return out

    cdef _fill_nodes(self, out, uint32_t start, uint32_t stop):
        cdef cnp.uint16_t[:] n_len = out["length"]
        cdef cnp.uint8_t[:] n_level = out["level"]
        cdef cnp.uint8_t[:] n_port = out["port"]
        cdef cnp.uint32_t[:] n_left = out["left"]
        cdef cnp.uint32_t[:] n_right = out["right"]
        cdef cnp.uint32_t[:] n_count = out["count"]
        cdef cnp.uint16_t[:] n_cat = out["category"]
        cdef uint32_t v
        for v in range(start, stop):
            n_cat[v - start] = self.g.nodes[v].cat
            n_len[v - start] = self.g.nodes[v].payload_len
            n_level[v - start] = self.g.nodes[v].level
            n_port[v - start] = self.g.nodes[v].port
            n_left[v - start] = self.g.nodes[v].left
            n_right[v - start] = self.g.nodes[v].right
            n_count[v - start] = self.g.nodes[v].count

    cdef _fill_ctxs(self, out, uint32_t start, uint32_t stop):
        cdef cnp.uint64_t[:] c_key = out["key"]
        cdef uint32_t v
        for v in range(start, stop):
            c_key[v - start] = ctx_key(&self.g.ctxs[v])

    def _export_cats(self, uint32_t start, uint32_t stop):
        """Category profiles [start, stop) in their file layout (cat_dtype): state, not derived,
        since a profile is taken when its context's counts double (resumed training must
        continue from the same ones). Slots past a profile's n are written as zeros."""
        cdef GraphC* g = &self.g
        cdef uint32_t c, d = g.emb_dims
        out = np.zeros(max(stop, start) - start, dtype=cat_dtype(d))
        if stop <= start:
            return out
        head = np.empty((stop - start, 3), np.uint32)
        cdef cnp.uint32_t[:, :] hv = head
        for c in range(start, stop):
            hv[c - start, 0] = g.cats[c].top
            hv[c - start, 1] = g.cats[c].n
            hv[c - start, 2] = g.cats[c].refreshed
        out["top"], out["n"], out["refreshed"] = head[:, 0], head[:, 1], head[:, 2]
        if d:
            keep = np.arange(d) < head[:, 1:2]
            dims = np.asarray(<cnp.uint32_t[:(stop - start) * d]>(g.cat_dims + <uint64_t>start * d))
            w = np.asarray(<float[:(stop - start) * d]>(g.cat_w + <uint64_t>start * d))
            out["dims"] = np.where(keep, dims.reshape(-1, d), 0)
            out["w"] = np.where(keep, w.reshape(-1, d), 0)
        return out

    cdef _import_cats(self, profiles):
        """Loading: category profiles (cat_dtype records), validated, then their chains."""
        cdef GraphC* g = &self.g
        cdef uint32_t c, d = g.emb_dims
        if len(profiles) != g.n_cats:
            raise CorruptBrainError(f"{len(profiles)} category profiles for {g.n_cats} categories")
        n = profiles["n"].astype(np.int64)
        top = profiles["top"].astype(np.int64)
        keep = np.arange(d) < n[:, None]
        dims = np.where(keep, profiles["dims"], 0).astype(np.uint32)
        w = np.where(keep, profiles["w"], 0).astype(np.float32)
        # each profile: n <= d, a top exactly when n > 0 and among its dims, dims ascending and
        # naming nodes, finite weights
        bad = (n > d) | ((n == 0) != (top == NONE))
        bad |= (n > 0) & ~((dims == top[:, None]) & keep).any(axis=1)
        bad |= (dims >= g.n_nodes).any(axis=1) | ~np.isfinite(w).all(axis=1)
        if d > 1:
            bad |= (keep[:, 1:] & (dims[:, 1:].astype(np.int64) <= dims[:, :-1])).any(axis=1)
        if bad.any():
            raise CorruptBrainError(f"category {int(np.argmax(bad)) + 1} has a damaged profile")
        cdef const cnp.int64_t[:] nv = n
        cdef const cnp.int64_t[:] tv = top
        cdef const cnp.uint32_t[:] rv = _aligned(profiles["refreshed"])
        for c in range(g.n_cats):
            g.cats[c].n = <uint32_t>nv[c]
            g.cats[c].top = <uint32_t>tv[c]
            g.cats[c].refreshed = rv[c]
        if g.n_cats and d:
            dims = np.ascontiguousarray(dims)
            w = np.ascontiguousarray(w)
            memcpy(g.cat_dims, cnp.PyArray_DATA(dims), <size_t>g.n_cats * d * sizeof(uint32_t))
            memcpy(g.cat_w, cnp.PyArray_DATA(w), <size_t>g.n_cats * d * sizeof(float))
        cats_rechain(g)

    def export_meta(self):
        """Counters and table capacities (with export_counts, the meta section of a brain)."""
        cdef GraphC* g = &self.g
        counters = dict(bytes_fed=g.bytes_fed, tokens_fed=g.tokens_fed, episodes=g.episodes,
                        formed=g.formed, pruned_nodes=g.pruned_nodes, pruned_edges=g.pruned_edges,
                        pruned_contexts=g.pruned_ctxs, prunes=g.prunes,
                        peak_memory_bytes=g.pool.peak)
        capacities = dict(nodes=g.cap_nodes, contexts=g.cap_ctxs, edges=g.cap_edges,
                          trie=g.cap_trie, arena=g.cap_arena, node_index=g.node_ix.capacity,
                          context_index=g.ctx_ix.capacity, edge_index=g.edge_ix.capacity,
                          trie_index=g.trie_ix.capacity, categories=g.cap_cats)
        return counters, capacities

    cdef _fill_edges(self, out, uint32_t start, uint32_t stop):
        cdef cnp.uint32_t[:] e_ctx = out["ctx"]
        cdef cnp.uint32_t[:] e_dst = out["dst"]
        cdef cnp.uint16_t[:] e_count = out["count"]
        cdef cnp.uint16_t[:] e_stamp = out["stamp"]
        cdef uint32_t v
        for v in range(start, stop):
            e_ctx[v - start] = self.g.edges[v].ctx
            e_dst[v - start] = self.g.edges[v].dst
            e_count[v - start] = self.g.edges[v].count
            e_stamp[v - start] = self.g.edges[v].stamp

    def export_state(self):
        """Arrays and counters that fully describe the graph (indexes and lists are derived)."""
        counts = self.export_counts()
        counters, capacities = self.export_meta()
        return dict(nodes=self.export_range("nodes", 0, counts["nodes"]),
                    arena=self.export_range("arena", 0, counts["arena"]),
                    contexts=self.export_range("contexts", 0, counts["contexts"]),
                    edges=self.export_range("edges", 0, counts["edges"]),
                    counters=counters, capacities=capacities, categories=counts["categories"],
                    profiles=self.export_range("categories", 0, counts["categories"]))

    def import_state(self, nodes, bytes arena, ctxs, edges, dict counters, capacities=None,
                     bint verify=True, uint32_t categories=0, profiles=None, crcs=None,
                     release=None, indexes=None):
        """Fill an empty Core from export_state() arrays, validating every id, offset and count
        (nodes: NODE_DTYPE records, or NODE_RECORD_DTYPE ones, whose right components are found).
        capacities=None sizes the tables to fit (merge); saved capacities are checked for
        plausibility first. Raises CorruptBrainError (the Core stays empty and consistent) on any
        inconsistency. verify=False skips the final full check() (ids, offsets and counts are
        still validated): for arrays built consistent by construction (merge). categories: how
        many the nodes' category ids may name, profiles their profiles (cat_dtype records; None:
        retaken from their contexts). A Core without embeddings drops them. crcs: (f, expected)
        to checksum the contexts' and edges' records while they are decoded, f(buffer, running)
        as zlib.crc32, expected a dict of the two sections' checksums. release(name, nbytes):
        called as each of those sections is read, with how much of it has been (from whichever
        thread read it; loading frees the file pages holding them). indexes: format 4, whose
        ctxs and edges are CTX_RAW_DTYPE and EDGE_RAW_DTYPE records, lists linked, and indexes
        the (context, edge) index slots; records inside this Core's map_private mapping are used
        in place, and every list and index is verified instead of built."""
        cdef GraphC* g = &self.g
        cdef uint32_t nn = len(nodes), nc = len(ctxs), ne = len(edges)
        if g.n_nodes != 0:
            raise ValueError("import_state needs an empty Core")
        if categories > 0xFFFF:
            raise CorruptBrainError(f"category count {categories} over 65535")
        self._n_categories = categories
        if nn < N_BASE or nn > g.max_nodes or ne > g.max_edges:
            raise CorruptBrainError(f"node/edge counts ({nn}, {ne}) outside the brain's limits")
        lengths = np.asarray(nodes["length"], dtype=np.uint64)
        if int(lengths.sum()) != len(arena):
            raise CorruptBrainError("payload lengths do not add up to the arena size")
        if capacities is None:
            trie = len(arena) + 257
            capacities = dict(nodes=nn + nn // 8 + 64, contexts=nc + nc // 8 + 64,
                              edges=min(ne + ne // 8 + 64, g.max_edges), trie=trie,
                              arena=len(arena) + len(arena) // 8 + 64,
                              node_index=nn * 5 // 3 + 64, context_index=nc * 5 // 3 + 64,
                              edge_index=ne * 5 // 3 + 64, trie_index=trie * 5 // 3 + 64)
            capacities["nodes"] = min(capacities["nodes"], g.max_nodes)
        else:
            # Trie states are at most one per payload byte plus a root per port.
            for name, n_items, bound in (("nodes", nn, nn), ("contexts", nc, nc), ("edges", ne, ne),
                                         ("trie", 0, len(arena) + 257), ("arena", len(arena), len(arena))):
                cap = int(capacities.get(name, -1))
                if cap < n_items or cap > 2 * bound + 4096:
                    raise CorruptBrainError(f"{name} capacity {cap} implausible for {n_items} items")
            for name in ("node_index", "context_index", "edge_index", "trie_index"):
                cap = int(capacities.get(name, -1))
                if (cap < 64 and cap != 0) or cap > 16 * (nn + nc + ne + len(arena)) + 4096:
                    raise CorruptBrainError(f"{name} capacity {cap} implausible")
        try:
            if indexes is None:
                self._load_arrays(nodes, arena, ctxs, edges, capacities, crcs, release)
            else:
                self._load_arrays_raw(nodes, arena, ctxs, edges, indexes, capacities, crcs)
        except CapExceeded as exc:
            self._unload()
            raise CorruptBrainError(f"brain does not fit its own limits: {exc}") from None
        except BaseException:             # CorruptBrainError, MemoryError, an interruption...
            self._unload()                # ...: the Core stays empty and consistent
            raise
        g.bytes_fed = counters["bytes_fed"]
        g.tokens_fed = counters["tokens_fed"]
        g.episodes = counters["episodes"]
        g.formed = counters["formed"]
        g.pruned_nodes = counters["pruned_nodes"]
        g.pruned_edges = counters["pruned_edges"]
        g.pruned_ctxs = counters["pruned_contexts"]
        g.prunes = counters["prunes"]
        # The recorded peak is history, not structure: never trust it past the cap (a real brain
        # cannot have exceeded it; a damaged one may claim anything -- a fuzz finding).
        if counters["peak_memory_bytes"] > g.pool.peak:
            g.pool.peak = min(counters["peak_memory_bytes"], g.pool.cap)
        cat_cap = int(capacities.get("categories", 0)) if capacities is not None else 0
        if cat_cap and not self._n_categories <= cat_cap <= max(8, 2 * self._n_categories):
            self._unload()
            raise CorruptBrainError(f"categories capacity {cat_cap} implausible for "
                                    f"{self._n_categories} categories")
        if g.max_cats and self._n_categories:
            if cats_restore(g, self._n_categories, profiles is None, cat_cap) < 0:
                err = g.pool.err
                g.pool.err = ERR_NONE
                self._unload()
                if err == ERR_NOMEM:
                    raise MemoryError("allocation failed while loading the categories")
                raise CorruptBrainError("brain does not fit its own limits: its categories")
            if profiles is not None:
                try:
                    self._import_cats(profiles)
                except CorruptBrainError:
                    self._unload()
                    raise
        try:
            if verify:
                self._check(False, True)
        except InvariantError as exc:
            self._unload()
            raise CorruptBrainError(f"loaded brain is inconsistent: {exc}") from None
        excl_settled(g)

    cdef _unload(self):
        """After a failed import_state: back to an empty Core (the tables freed, and the counts
        that loading accumulated outside them cleared)."""
        cdef GraphC* g = &self.g
        store_free(g)
        store_init(g)
        self._unmap()
        g.total_count = g.bytes_fed = g.tokens_fed = g.episodes = g.formed = 0
        g.pruned_nodes = g.pruned_edges = g.pruned_ctxs = g.prunes = 0

    def _index_edges(self, list out, decoded, edges, uint32_t nc, uint32_t nn, crc=None,
                     release=None):
        """Loading: decode and validate the edge records, marking the contexts with two or more
        successors (then set the event `decoded`), and index the edges (on a second thread for
        big brains, see PARALLEL_LOAD_EDGES). Appends the first invalid edge, then the first
        repeated edge (each NONE if none) to out, or the exception decoding raised (a
        CorruptBrainError if the records fail their checksum), for the loading thread to raise."""
        cdef uint32_t bad = NONE, dup = NONE
        cdef uint64_t[::1] d
        try:
            d = np.zeros(2 * ((int(nc) + 63) // 64) + 1, dtype=np.uint64)   # see _decode_edges
            bad = self._decode_section("edges", edges, EDGE_DTYPE, nc, nn, crc, release, d)
            out.append(bad)
        except BaseException as exc:      # (on the second thread nothing else would see it)
            out.append(exc)
            return
        finally:
            decoded.set()
        if bad == NONE:
            with nogil:
                dup = rebuild_edge_index(&self.g, &d[(<uint64_t>nc + 63) >> 6])
        out.append(dup)

    def _decode_section(self, str name, records, dtype, uint32_t nc, uint32_t nn, crc, release,
                        uint64_t[::1] seen=None):
        """Loading: decode the contexts or edges LOAD_CHUNK records at a time, validating them
        and (with crc: the section's checksum function and expected value) checksumming each run
        of records just before it is decoded. Returns the first invalid record (NONE if none);
        raises CorruptBrainError on a checksum mismatch, which is reported first: a damaged
        file may also hold invalid records. release(name, nbytes) is told how much of the
        section has been read. seen: see _decode_edges."""
        cdef const uint8_t[::1] raw = _records(records, dtype)
        cdef uint32_t n = len(records), start, stop, bad = NONE
        cdef size_t size = dtype.itemsize
        cdef bint edges = name == "edges"
        cdef uint64_t running = 0
        # the file's bytes, as checksummed when saved (raw may be a byte-swapped copy)
        view = np.ascontiguousarray(records).view(np.uint8).reshape(-1) if crc is not None else None
        for start in range(0, n, LOAD_CHUNK):
            stop = min(n, start + LOAD_CHUNK)
            if crc is not None:
                running = crc[0](view[start * size:stop * size], running)
            with nogil:
                if edges:
                    bad = _decode_edges(&self.g, &raw[0], start, stop, nc, nn, &seen[0])
                else:                     # (any 8 bytes are a key)
                    _decode_ctxs(&self.g, &raw[0], start, stop)
            if release is not None:
                release(name, stop * size)
            if bad != NONE:
                if crc is not None:
                    running = crc[0](view[stop * size:], running)
                break
        if crc is not None and running != crc[1]:
            raise CorruptBrainError(f"section {name} checksum mismatch")
        return bad

    cdef _load_nodes(self, nodes, bytes arena):
        """Loading: the node records and their payloads, validated. Records without a right
        component (NODE_RECORD_DTYPE) leave it NONE, for _find_right_components."""
        cdef GraphC* g = &self.g
        cdef uint32_t v, nn = len(nodes), left, right, length
        cdef uint64_t off = 0
        cdef const uint8_t* ap = arena
        cdef NodeC* nd
        cdef bint has_right = "right" in nodes.dtype.names
        cdef const cnp.uint16_t[:] n_len = _aligned(nodes["length"])
        cdef const cnp.uint8_t[:] n_level = _aligned(nodes["level"])
        cdef const cnp.uint8_t[:] n_port = _aligned(nodes["port"])
        cdef const cnp.uint32_t[:] n_left = _aligned(nodes["left"])
        cdef const cnp.uint32_t[:] n_right = _aligned(nodes["right"] if has_right else
                                                      np.full(nn, NONE, np.uint32))
        cdef const cnp.uint32_t[:] n_count = _aligned(nodes["count"])
        cdef const cnp.uint16_t[:] n_cat = _aligned(nodes["category"])
        cdef const cnp.uint16_t[:] n_reserved = _aligned(nodes["reserved"] if has_right else
                                                         np.zeros(nn, np.uint16))
        cdef uint32_t n_cats = self._n_categories
        cdef bint keep_cats = g.max_cats != 0
        if nn:
            memcpy(g.arena, ap, len(arena))
        g.n_arena = len(arena)
        for v in range(nn):
            nd = &g.nodes[v]
            length = n_len[v]
            left = n_left[v]
            right = n_right[v]
            if length > g.max_payload or n_level[v] > g.max_levels:
                raise CorruptBrainError(f"node {v} exceeds the brain's max_payload/max_levels")
            if ((left == NONE) != (right == NONE) and has_right) or \
                    (left != NONE and (left >= v or (has_right and right >= v))):
                raise CorruptBrainError(f"node {v} has invalid components")
            if n_cat[v] > n_cats or (n_cat[v] and length == 0):
                raise CorruptBrainError(f"node {v} names category {n_cat[v]} of {n_cats}")
            if n_reserved[v]:
                raise CorruptBrainError(f"node {v}: reserved field set")
            nd.payload_off = <uint32_t>off
            nd.payload_len = length
            nd.level = n_level[v]
            nd.port = n_port[v]
            nd.left = left
            nd.right = right
            nd.count = n_count[v]
            nd.aux = 0
            nd.cat = n_cat[v] if keep_cats else 0
            nd.first = ap[off] if length else 0
            nd.poly = poly_bytes(g.arena + off, length) if length or v == STOP else MARKER_POLY()
            nd.key = node_key(nd.poly, nd.port, length)
            g.total_count += nd.count
            off += length
            g.n_nodes = v + 1

    cdef _adopt(self, void** table, records, size_t itemsize, str what):
        """Format 4: a table of the loaded records, in place if they lie in this Core's mapping
        (and are aligned), else copied into the pool."""
        if not RAW_IN_PLACE:               # pragma: no cover - big-endian hosts: native copies
            records = np.ascontiguousarray(records.astype(records.dtype.newbyteorder("=")))
        cdef const uint8_t[::1] raw = np.frombuffer(records, np.uint8) if len(records) else None
        cdef size_t n = len(records), nbytes = n * itemsize
        cdef const uint8_t* p = &raw[0] if n else NULL
        cdef void* block
        pool_free(&self.g.pool, table[0], 0, itemsize)   # store_alloc_exact's empty block
        table[0] = NULL
        if self.g.pool.used > self.g.pool.cap or nbytes > self.g.pool.cap - self.g.pool.used:
            raise CorruptBrainError(f"brain does not fit its own limits: its {what}")
        if RAW_IN_PLACE and n and self.g.pool.map_lo <= <size_t>p and \
                <size_t>p + nbytes <= self.g.pool.map_hi and <size_t>p % 8 == 0:
            table[0] = <void*>p
            self.g.pool.used += nbytes
        else:
            block = pool_alloc(&self.g.pool, n, itemsize)
            if block == NULL:
                self._raise(f"loading the {what}")
            if n:
                memcpy(block, p, nbytes)
            table[0] = block
        if self.g.pool.used > self.g.pool.peak:
            self.g.pool.peak = self.g.pool.used

    def _verify_raw(self, list out, uint32_t nn, crc_edges, uint64_t[::1] shared, scanned):
        """Format 4, the edge side (a second thread for big brains): checksum the edge records,
        validate the edge index's slots (shared[1]: how many are occupied, 2**64-1 if invalid;
        then `scanned` is set), verify the successor lists, then take a share of the edge index
        check (_share_edge_index). Appends the first invalid context, then the first invalid
        edge index entry and how many indexed edges were met, or the exception raised."""
        cdef GraphC* g = &self.g
        cdef uint32_t bad_ctx = NONE, bad_ix = NONE
        cdef uint64_t found = 0, chunk = SHARE_CHUNK
        try:
            try:
                if crc_edges is not None:
                    self._checksum(crc_edges)
                with nogil:
                    shared[1] = index_filled(&g.edge_ix, g.n_edges)
            finally:
                scanned.set()
            with nogil:
                bad_ctx = verify_lists(g, nn)
                if shared[1] < IX_CROWDED_FILLED:
                    bad_ix = _share_edge_index(g, &shared[0], &found, chunk)
            out.extend((bad_ctx, bad_ix, found))
        except BaseException as exc:      # (on the second thread nothing else would see it)
            out.append(exc)

    def _checksum(self, check):
        """Format 4: check is (section name, its records, crc function, expected); raises
        CorruptBrainError on a mismatch."""
        name, records, fn, expected = check
        if fn(records.view(np.uint8), 0) != expected:
            raise CorruptBrainError(f"section {name} checksum mismatch")

    cdef _load_arrays_raw(self, nodes, bytes arena, ctxs, edges, indexes, dict capacities, crcs):
        """import_state for format 4: nodes, trie and node index as _load_arrays builds them;
        the contexts, edges and their indexes adopted (_adopt) and verified, the edge side on a
        second thread for big brains while the nodes load; both threads then share the edge
        index check. The index sections are not checksummed: they are verified whole (each slot
        empty, or naming the one item a probe for it finds), so what passes is a correct index
        of the records, and any change to one slot is refused."""
        cdef GraphC* g = &self.g
        cdef uint32_t nn = len(nodes), nc = len(ctxs), ne = len(edges)
        cdef uint32_t dup_node, bad_ctx_ix = NONE, bad_right = NONE, bad_ix = NONE
        cdef uint64_t found = 0, chunk = SHARE_CHUNK
        cdef uint64_t[::1] shared
        cdef int trie_ok
        cdef uint64_t caps[9]
        ctx_ix, edge_ix = indexes
        for i, name in enumerate(CAPACITY_NAMES):
            caps[i] = int(capacities[name])
        if caps[5] * 3 < <uint64_t>nn * 4 or (caps[5] == 0 and nn):
            raise CorruptBrainError(f"node_index too small for {nn} items")
        caps[1] = caps[2] = caps[6] = caps[7] = 0
        if store_alloc_exact(g, caps) < 0:
            self._raise("loading")
        self._adopt(<void**>&g.ctxs, ctxs, sizeof(CtxC), "contexts")
        g.n_ctxs = g.cap_ctxs = nc
        self._adopt(<void**>&g.edges, edges, sizeof(EdgeC), "edges")
        g.n_edges = g.cap_edges = ne
        self._adopt(<void**>&g.ctx_ix.slots, ctx_ix, sizeof(uint32_t), "context index")
        ix_set_capacity(&g.ctx_ix, len(ctx_ix))
        self._adopt(<void**>&g.edge_ix.slots, edge_ix, sizeof(uint32_t), "edge index")
        ix_set_capacity(&g.edge_ix, len(edge_ix))
        crc_ctx = crc_edge = None
        if crcs is not None:
            crc_ctx = ("contexts", ctxs, crcs[0], crcs[1]["contexts"])
            crc_edge = ("edges", edges, crcs[0], crcs[1]["edges"])
        shared_arr = np.array([0, <uint64_t>-1], dtype=np.uint64)   # next chunk; edge slots used
        shared = shared_arr
        scanned = threading.Event()
        edges_done = []
        worker = None
        if ne >= PARALLEL_LOAD_EDGES:
            worker = threading.Thread(target=self._verify_raw,
                                      args=(edges_done, nn, crc_edge, shared, scanned))
            worker.start()
        else:
            self._verify_raw(edges_done, nn, crc_edge, shared, scanned)
        try:
            if crc_ctx is not None:
                self._checksum(crc_ctx)
            with nogil:
                bad_ctx_ix = verify_context_index(g)
            dup_node, bad_right, trie_ok = self._load_node_side(nodes, arena, True)
            scanned.wait()
            if shared[1] < IX_CROWDED_FILLED:
                with nogil:
                    bad_ix = _share_edge_index(g, &shared[0], &found, chunk)
        finally:
            if worker is not None:
                _join_all_the_way(worker)
        if isinstance(edges_done[0], BaseException):
            raise edges_done[0]
        bad_ix = min(bad_ix, edges_done[1])      # the first: see _share_edge_index
        if edges_done[0] != NONE:
            raise CorruptBrainError(f"successor list of context {edges_done[0]} is invalid")
        if shared[1] == IX_CROWDED_FILLED:
            _refuse_crowded("edge")
        if bad_ix != NONE:
            raise CorruptBrainError(f"edge index entry of edge {bad_ix} is invalid")
        if bad_ctx_ix == IX_CROWDED:
            _refuse_crowded("context")
        if bad_ctx_ix != NONE:
            raise CorruptBrainError(f"context index entry of context {bad_ctx_ix} is invalid")
        if shared[1] == <uint64_t>-1 or shared[1] != found + edges_done[2]:
            raise CorruptBrainError("edge index is invalid")
        g.edge_ix.filled = shared[1]
        _refuse_node_side(dup_node, bad_right, trie_ok)

    cdef tuple _load_node_side(self, nodes, bytes arena, bint find_right):
        """Loading (either format): the node records, their index (refusing repeats), their right
        components when the records lack them, and the trie. Returns the first repeated node,
        the first node with invalid components (NONE each if none) and trie_build's answer."""
        cdef GraphC* g = &self.g
        cdef uint32_t dup_node, bad_right = NONE
        cdef int trie_ok
        self._load_nodes(nodes, arena)
        with nogil:
            dup_node = rebuild_index(g, 0)
            if find_right and dup_node == NONE:
                bad_right = _find_right_components(g)
            trie_ok = trie_build(g) if dup_node == NONE else 0
        return dup_node, bad_right, trie_ok

    cdef _load_arrays(self, nodes, bytes arena, ctxs, edges, dict capacities, crcs, release):
        cdef GraphC* g = &self.g
        cdef uint32_t nn = len(nodes), nc = len(ctxs), ne = len(edges)
        cdef uint32_t dup_node, dup_ctx, bad_right = NONE
        cdef bint find_right = "right" not in nodes.dtype.names
        cdef int trie_ok
        cdef uint64_t caps[9]
        for i, name in enumerate(CAPACITY_NAMES):
            caps[i] = int(capacities[name])
        for i, n_items in ((5, nn), (6, nc), (7, ne)):
            if caps[i] * 3 < <uint64_t>n_items * 4 or (caps[i] == 0 and n_items):
                raise CorruptBrainError(f"{CAPACITY_NAMES[i]} too small for {n_items} items")
        # Allocate exactly the saved capacities (validated), so memory_bytes round-trips.
        if store_alloc_exact(g, caps) < 0:
            self._raise("loading")
        # Contexts and edges are most of a brain: their records are decoded in place (unaligned
        # native loads, see _records) instead of copying each field into an aligned array first,
        # which allocated and wrote ~450 MB more for a 1.3 GB graph.
        crc_ctxs = crc_edges = None
        if crcs is not None:
            crc_ctxs = (crcs[0], crcs[1]["contexts"])
            crc_edges = (crcs[0], crcs[1]["edges"])
        # The successor lists need the edges decoded.
        edges_done = []
        decoded = threading.Event()
        worker = None
        if ne >= PARALLEL_LOAD_EDGES:
            worker = threading.Thread(target=self._index_edges,
                                      args=(edges_done, decoded, edges, nc, nn, crc_edges, release))
            worker.start()
        try:
            self._decode_section("contexts", ctxs, CTX_DTYPE, nc, nn, crc_ctxs, release)
            if worker is None:
                self._index_edges(edges_done, decoded, edges, nc, nn, crc_edges, release)
            dup_node, bad_right, trie_ok = self._load_node_side(nodes, arena, find_right)
            with nogil:
                dup_ctx = rebuild_index(g, 1)
            decoded.wait()
            if edges_done[0] == NONE:
                with nogil:
                    link_edge_lists(g)
        finally:
            if worker is not None:
                _join_all_the_way(worker)
        if isinstance(edges_done[0], BaseException):
            raise edges_done[0]
        if edges_done[0] != NONE:
            raise CorruptBrainError(f"edge {edges_done[0]} is invalid")
        _refuse_node_side(dup_node, bad_right, trie_ok)
        if dup_ctx == IX_CROWDED:
            _refuse_crowded("context")
        if dup_ctx != NONE:
            raise CorruptBrainError(f"context {dup_ctx} repeats an earlier context's key")
        if edges_done[1] == IX_CROWDED:
            _refuse_crowded("edge")
        if edges_done[1] != NONE:
            raise CorruptBrainError(f"edge {edges_done[1]} repeats an earlier edge")
