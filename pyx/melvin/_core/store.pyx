# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
from libc.string cimport memcpy, memset, memmove, memcmp
from libc.stdlib cimport calloc, free, malloc
from libc.math cimport sqrt
from melvin._core.mem cimport pool_alloc, pool_resize, pool_free, ERR_LIMIT, ERR_CAP


cdef void _no_indexes(GraphC* g) noexcept nogil:
    ix_set_capacity(&g.node_ix, 0)
    ix_set_capacity(&g.ctx_ix, 0)
    ix_set_capacity(&g.edge_ix, 0)
    ix_set_capacity(&g.trie_ix, 0)
    g.node_ix.filled = g.ctx_ix.filled = g.edge_ix.filled = g.trie_ix.filled = 0


cdef int store_init(GraphC* g) noexcept nogil:
    cdef uint32_t i
    _no_indexes(g)                        # (their slots are NULL: g is zeroed)
    for i in range(256):
        g.port_root[i] = NONE
        g.port_marker[i] = NONE
    return 0


cdef void store_free(GraphC* g) noexcept nogil:
    cats_free(g)
    g.n_cats = 0
    free(g.excl.slots)                   # query scratch (libc, not the pool): see ExclC
    free(g.excl.ids)
    free(g.excl.keys)
    free(g.excl.pre)
    free(g.excl.first)
    memset(&g.excl, 0, sizeof(ExclC))
    pool_free(&g.pool, g.nodes, g.cap_nodes, sizeof(NodeC))
    pool_free(&g.pool, g.ctxs, g.cap_ctxs, sizeof(CtxC))
    pool_free(&g.pool, g.edges, g.cap_edges, sizeof(EdgeC))
    pool_free(&g.pool, g.trie, g.cap_trie, sizeof(TrieC))
    pool_free(&g.pool, g.arena, g.cap_arena, 1)
    pool_free(&g.pool, g.node_ix.slots, g.node_ix.capacity, sizeof(uint32_t))
    pool_free(&g.pool, g.ctx_ix.slots, g.ctx_ix.capacity, sizeof(uint32_t))
    pool_free(&g.pool, g.edge_ix.slots, g.edge_ix.capacity, sizeof(uint32_t))
    pool_free(&g.pool, g.trie_ix.slots, g.trie_ix.capacity, sizeof(uint32_t))
    g.nodes = NULL; g.ctxs = NULL; g.edges = NULL; g.trie = NULL; g.arena = NULL
    g.node_ix.slots = NULL; g.ctx_ix.slots = NULL; g.edge_ix.slots = NULL; g.trie_ix.slots = NULL
    g.cap_nodes = g.cap_ctxs = g.cap_edges = g.cap_trie = g.cap_arena = 0
    g.n_nodes = g.n_ctxs = g.n_edges = g.n_trie = g.n_arena = 0
    _no_indexes(g)


cdef size_t store_accounted(GraphC* g) noexcept nogil:
    """What the pool should hold, recomputed from the capacities (check() compares)."""
    return (<size_t>g.cap_nodes * sizeof(NodeC) + <size_t>g.cap_ctxs * sizeof(CtxC)
            + <size_t>g.cap_edges * sizeof(EdgeC) + <size_t>g.cap_trie * sizeof(TrieC)
            + <size_t>g.cap_arena
            + (g.node_ix.capacity + g.ctx_ix.capacity + g.edge_ix.capacity + g.trie_ix.capacity)
            * sizeof(uint32_t)
            + <size_t>g.cap_cats * (sizeof(CatC) + g.emb_dims * (sizeof(uint32_t) + sizeof(float))
                                    + 2 * sizeof(uint32_t)))


cdef int _grow(GraphC* g, void** ptr, uint32_t* capacity, uint64_t need, size_t itemsize,
               uint64_t hard_max) noexcept nogil:
    """Grow a dense array to hold `need` items: 1.5x, or as much as the budget still allows."""
    cdef uint64_t new_cap, fit
    if need <= capacity[0]:
        return 0
    if need > hard_max:
        g.pool.err = ERR_LIMIT
        return -1
    new_cap = <uint64_t>capacity[0] + capacity[0] // 4
    if new_cap < need:
        new_cap = need
    if new_cap < 64:
        new_cap = 64
    if new_cap > hard_max:
        new_cap = hard_max
    if pool_resize(&g.pool, ptr, capacity[0], new_cap, itemsize) == 0:
        capacity[0] = <uint32_t>new_cap
        return 0
    if g.pool.err == ERR_CAP and g.pool.used <= g.pool.cap:
        fit = capacity[0] + (g.pool.cap - g.pool.used) // itemsize
        if fit >= need and fit < new_cap:
            if pool_resize(&g.pool, ptr, capacity[0], fit, itemsize) == 0:
                capacity[0] = <uint32_t>fit
                return 0
    return -1


cdef inline uint64_t _ix_hash(GraphC* g, int kind, uint32_t v) noexcept nogil:
    if kind == 0:
        return g.nodes[v].key
    if kind == 1:
        return ctx_key(&g.ctxs[v])
    if kind == 2:
        return edge_hash(g.edges[v].ctx, g.edges[v].dst)
    return trie_key(g.trie[v].hash)


cdef inline bint _ix_skip(GraphC* g, int kind, uint32_t v, const uint64_t* multi) noexcept nogil:
    """Items the index leaves out: the sole edge of a context (edge_find reads it from the
    context's list head). multi: a bitmap of the contexts with two or more successors, else
    NULL for the contexts' own counts."""
    cdef uint32_t c
    if kind != 2:
        return False
    if multi != NULL:
        c = g.edges[v].ctx
        return not (multi[c >> 6] >> (c & 63)) & 1
    return g.ctxs[g.edges[v].ctx].distinct < 2


cdef inline uint64_t _ix_put(IndexC* ix, uint64_t h, uint32_t v) noexcept nogil:
    """Index v under h; returns how many occupied slots the probe passed."""
    cdef uint64_t cap = ix.capacity, passed = 0
    cdef uint64_t i = fastrange(h, cap)
    while ix.slots[i] != 0:
        passed += 1
        i += 1
        if i == cap:
            i = 0
    ix.slots[i] = ix_slot(h, v, ix.mask)
    ix.filled += 1
    return passed


cdef inline void _ix_unput(IndexC* ix, uint64_t h, uint32_t v) noexcept nogil:
    """Remove the slot of v (only right after inserting it, before anything probes past it)."""
    cdef uint64_t cap = ix.capacity
    cdef uint64_t i = fastrange(h, cap)
    cdef uint32_t slot = ix_slot(h, v, ix.mask)
    while ix.slots[i] != slot:
        i += 1
        if i == cap:
            i = 0
    ix.slots[i] = 0


cdef inline bint _ix_same(GraphC* g, int kind, uint32_t a, uint32_t b) noexcept nogil:
    """Whether items a and b have the same identity (what the index's lookups compare)."""
    cdef NodeC* x
    cdef NodeC* y
    if kind == 0:
        x = &g.nodes[a]
        y = &g.nodes[b]
        return x.key == y.key and x.port == y.port and x.payload_len == y.payload_len and \
            memcmp(g.arena + x.payload_off, g.arena + y.payload_off, x.payload_len) == 0
    if kind == 1:
        return g.ctxs[a].key_lo == g.ctxs[b].key_lo and g.ctxs[a].key_hi == g.ctxs[b].key_hi
    return g.edges[a].ctx == g.edges[b].ctx and g.edges[a].dst == g.edges[b].dst


cdef inline bint _ix_put_new(GraphC* g, IndexC* ix, int kind, uint64_t h, uint32_t v,
                             uint64_t* passed) noexcept nogil:
    """_ix_put, unless an item with v's identity is indexed already (then True, v not put): the
    probe passes every slot such an item could occupy, and reads a record only on a tag match.
    Adds the occupied slots passed to *passed."""
    cdef uint64_t cap = ix.capacity
    cdef uint64_t i = fastrange(h, cap)
    cdef uint32_t s, mask = ix.mask
    while True:
        s = ix.slots[i]
        if s == 0:
            break
        if ix_tag_matches(s, h, mask) and _ix_same(g, kind, ix_value(s, mask), v):
            return True
        passed[0] += 1
        i += 1
        if i == cap:
            i = 0
    ix.slots[i] = ix_slot(h, v, mask)
    ix.filled += 1
    return False


# Crowded indexes. A probe passes the run of occupied slots it starts in, so that run's length
# is its cost. Hashes spread items evenly: in an index 3/4 full (the most any gets) a lookup
# that misses passes ~7.5 slots on average. But a brain file's item hashes are whatever its
# writer chose (any 8 bytes are a context key, and ids pick edge hashes): items that share one
# home slot make a run as long as the index, so inserting them takes quadratic time (format 3
# loads rebuild their indexes; format 4's checks walk the same paths); items each at a home of
# its own next to the last make no insert slow but every later miss that starts in the run as
# slow as the run is long. Loading refuses both: an index whose mean miss cost over all the
# slots a probe can start at exceeds CROWD_MEAN, and an insert as soon as the slots passed so far
# exceed what such an index could hold (sum of L(L+1)/2 over runs of L bounds the passes too).
cdef uint64_t CROWD_MEAN = 32
cdef uint64_t CROWD_SLACK = 1 << 16       # small indexes: chance runs of a few hundred slots


class crowd_limit:
    """Test hook (tests, fuzzers), a context manager: while it holds, loading allows a mean miss
    cost of `mean` (None: any, to write crowded brains) and `slack` slots more. The setting
    before it is restored on exit."""

    def __init__(self, mean, slack=0):
        self.mean = (1 << 32) if mean is None else int(mean)
        self.slack = int(slack)

    def __enter__(self):
        global CROWD_MEAN, CROWD_SLACK
        self.old = (CROWD_MEAN, CROWD_SLACK)
        CROWD_MEAN, CROWD_SLACK = self.mean, self.slack
        return self

    def __exit__(self, *exc):
        global CROWD_MEAN, CROWD_SLACK
        CROWD_MEAN, CROWD_SLACK = self.old
        return False


cdef inline uint64_t crowd_bound(uint64_t capacity) noexcept nogil:
    if CROWD_MEAN > 0xFFFFFFFFu:
        return <uint64_t>-1
    return CROWD_MEAN * capacity + CROWD_SLACK


cdef inline bint ix_crowded(IndexC* ix) noexcept nogil:
    return index_filled(ix, NONE) == IX_CROWDED_FILLED


# Indexes of at least this many items are filled by partition (_ix_fill_partitioned); each
# partition covers 2**_part_shift slots (2**15: 128 KB, which stay in L2 while filled).
cdef uint32_t _part_min = 1 << 18
cdef uint32_t _part_shift = 15
cdef bint _part_count = False


class partitioned_fills:
    """Test hook (tests, fuzzers), a context manager: while it holds, every index is filled by
    partition, as big ones are, in 8-slot partitions so that probe runs cross partition
    boundaries and wrap around the table; count: sizing the runs by a counting pass first, the
    fallback for skewed hashes. The setting before it is restored on exit."""

    def __init__(self, count=False):
        self.count = bool(count)

    def __enter__(self):
        global _part_min, _part_shift, _part_count
        self.old = (_part_min, _part_shift, _part_count)
        _part_min, _part_shift, _part_count = 1, 3, self.count
        return self

    def __exit__(self, *exc):
        global _part_min, _part_shift, _part_count
        _part_min, _part_shift, _part_count = self.old
        return False


cdef inline uint64_t _part_item(uint32_t v, uint64_t h, uint64_t i, uint32_t low) noexcept nogil:
    """A partitioned fill's scratch item: the id over a fingerprint, the low 32 bits of the hash
    with the probe start's offset in its range in place of the lowest bits."""
    return (<uint64_t>v << 32) | ((<uint32_t>h & ~low) | (<uint32_t>i & low))


cdef int _ix_fill_partitioned(GraphC* g, IndexC* ix, int kind, uint32_t n, bint unique,
                              uint32_t* found, const uint64_t* multi) noexcept nogil:
    """_ix_fill for big indexes: items are placed (stably) in runs by the slot range their probe
    starts in, then inserted range by range, so each insert hits a slot range that is in cache
    instead of a random one in a table of hundreds of MB (a 27M-edge index: 1.2 s of cache and
    TLB misses). Each range is zeroed just before it is filled, which also brings it into cache.
    For the unique check the fingerprints of the slots filled in the current and next range are
    kept beside them, so a record is read only when 17 hash bits match (a slot's tag has as few
    as 6). Sets *found like _ix_fill's result; returns -1 (nothing written) without scratch."""
    cdef uint64_t cap = ix.capacity, h, i, base, zeroed = 0, spill = 0, k, end
    cdef uint64_t passed = 0, bound = crowd_bound(cap) if unique else <uint64_t>-1
    cdef uint32_t mask = ix.mask, shift = _part_shift
    while ((1u << shift) - 1) & ~mask:    # the offset bits must lie below the tag bits
        shift -= 1
    cdef uint32_t low = (1u << shift) - 1
    cdef uint32_t v, w, s, p, n_parts = <uint32_t>((cap - 1) >> shift) + 1
    cdef bint near = True                 # every filled slot in the window has its fingerprint
    # Hashes spread items evenly over the ranges, so one pass can place them in runs of a fixed
    # width, 6 standard deviations above the mean count; if a run overflows anyway (keys made to
    # collide) or there is no room for the slack, a counting pass sizes the runs first.
    cdef double mean = <double>n / n_parts
    cdef uint64_t width = 0 if _part_count else <uint64_t>(mean + 6 * sqrt(mean)) + 64
    cdef uint64_t* start = <uint64_t*>malloc((n_parts + 1) * sizeof(uint64_t))
    cdef uint64_t* stop = <uint64_t*>malloc((n_parts + 1) * sizeof(uint64_t))
    cdef uint32_t* near_fp = <uint32_t*>malloc(2 * (<size_t>low + 1) * sizeof(uint32_t)) \
        if unique else NULL
    cdef uint64_t* items = <uint64_t*>malloc(n_parts * width * sizeof(uint64_t)) if width else NULL
    found[0] = NONE
    if items == NULL:
        width = 0
    else:
        for p in range(n_parts):
            start[p] = stop[p] = p * width
        for v in range(n):
            if _ix_skip(g, kind, v, multi):
                continue
            h = _ix_hash(g, kind, v)
            i = fastrange(h, cap)
            p = <uint32_t>(i >> shift)
            if stop[p] == start[p] + width:
                if n_parts * width < n:
                    free(items)
                    items = NULL
                width = 0
                break
            items[stop[p]] = _part_item(v, h, i, low)
            stop[p] += 1
    if width == 0 and items == NULL:
        items = <uint64_t*>malloc(<size_t>n * sizeof(uint64_t))
    if start == NULL or stop == NULL or items == NULL or (unique and near_fp == NULL):
        free(start)
        free(stop)
        free(items)
        free(near_fp)
        return -1
    if width == 0:                        # counting sort: runs end to end
        memset(stop, 0, (n_parts + 1) * sizeof(uint64_t))
        for v in range(n):
            if not _ix_skip(g, kind, v, multi):
                stop[(fastrange(_ix_hash(g, kind, v), cap) >> shift) + 1] += 1
        for p in range(n_parts):
            stop[p + 1] += stop[p]
        memcpy(start, stop, n_parts * sizeof(uint64_t))
        for v in range(n):
            if _ix_skip(g, kind, v, multi):
                continue
            h = _ix_hash(g, kind, v)
            i = fastrange(h, cap)
            items[stop[i >> shift]] = _part_item(v, h, i, low)
            stop[i >> shift] += 1
    for p in range(n_parts):
        base = <uint64_t>p << shift
        k = start[p]
        zeroed = _ix_zero_to(ix, zeroed, base + low + 1)
        if unique and spill:              # the last range's overflow moves down with the window
            memmove(near_fp, near_fp + low + 1, spill * sizeof(uint32_t))
        spill = 0
        end = stop[p]
        while k < end:
            v = <uint32_t>(items[k] >> 32)
            w = <uint32_t>items[k]
            i = base + (w & low)
            while True:
                s = ix.slots[i]
                if s == 0:
                    break
                if unique and ((s ^ w) & ~mask) == 0:
                    if not near or i - base >= 2 * (<uint64_t>low + 1) or \
                            ((near_fp[i - base] ^ w) & ~low) == 0:
                        if _ix_same(g, kind, ix_value(s, mask), v):
                            found[0] = v
                            break
                passed += 1
                if passed > bound:
                    found[0] = IX_CROWDED
                    break
                i += 1
                if i == cap:
                    i = 0
                    near = False          # wrapped into ranges filled long ago
                elif i == zeroed:         # a probe run past the ranges zeroed so far
                    zeroed = _ix_zero_to(ix, zeroed, zeroed + low + 1)
            if found[0] != NONE:
                break
            ix.slots[i] = (w & ~mask) | (v + 1)
            ix.filled += 1
            if unique:
                if i - base < 2 * (<uint64_t>low + 1):
                    near_fp[i - base] = w
                    if i - base > low and i - base - low > spill:
                        spill = i - base - low
                else:
                    near = False          # beyond the window: its fingerprint is not kept
            k += 1
        if found[0] != NONE:
            break
    _ix_zero_to(ix, zeroed, cap)          # an early stop leaves no garbage behind
    free(start)
    free(stop)
    free(items)
    free(near_fp)
    return 0


cdef inline uint64_t _ix_zero_to(IndexC* ix, uint64_t zeroed, uint64_t end) noexcept nogil:
    """Zero the slots from zeroed up to end (at most the capacity); the new zeroed mark."""
    if end > ix.capacity:
        end = ix.capacity
    if end > zeroed:
        memset(ix.slots + zeroed, 0, (end - zeroed) * sizeof(uint32_t))
        return end
    return zeroed


cdef uint32_t _ix_fill(GraphC* g, IndexC* ix, int kind, uint32_t n, bint unique=False,
                       const uint64_t* multi=NULL) noexcept nogil:
    """Index items 0..n-1 of a kind afresh. With unique (loading: nodes, contexts, edges), stop at
    the first item whose identity an earlier one has and return it, or return IX_CROWDED if the
    items crowd (see "Crowded indexes"); else NONE."""
    cdef uint32_t v, j
    cdef uint64_t ring[16]
    cdef uint64_t* own = NULL
    cdef uint64_t passed = 0, bound = crowd_bound(ix.capacity)
    cdef int rc
    ix.filled = 0
    if ix.capacity == 0:
        return NONE                       # never allocated (and nothing to index)
    if n >= _part_min and n and kind != 3 and ix.capacity <= 0xFFFFFFFFu:
        if kind == 2 and multi == NULL:
            own = _multi_successors(g)
            multi = own
        rc = _ix_fill_partitioned(g, ix, kind, n, unique, &v, multi)
        if own != NULL:
            free(own)
            multi = NULL                  # (the caller's bitmap, if any, stays in use)
        if rc == 0:
            return IX_CROWDED if v == NONE and unique and ix_crowded(ix) else v
    memset(ix.slots, 0, ix.capacity * sizeof(uint32_t))
    # Pipelined: the slot of item v+16 is prefetched while item v is inserted.
    for v in range(n if n < 16 else 16):
        ring[v] = _ix_hash(g, kind, v)
        prefetch(&ix.slots[fastrange(ring[v], ix.capacity)])
    for v in range(n):
        j = v & 15
        if _ix_skip(g, kind, v, multi):
            pass
        elif unique:
            if _ix_put_new(g, ix, kind, ring[j], v, &passed):
                return v
            if passed > bound:
                return IX_CROWDED
        elif not (kind == 3 and g.trie[v].parent == NONE):   # roots are nobody's children
            _ix_put(ix, ring[j], v)
        if v + 16 < n:
            ring[j] = _ix_hash(g, kind, v + 16)
            prefetch(&ix.slots[fastrange(ring[j], ix.capacity)])
    return IX_CROWDED if unique and ix_crowded(ix) else NONE


cdef uint64_t* _multi_successors(GraphC* g) noexcept nogil:
    """A bitmap of the contexts with two or more successors (NULL without memory): a refill of a
    big edge index asks it of every edge, and a context record read at random per edge was ~40%
    of the refill (2 MB of bitmap per 16M contexts stays in cache; the contexts are read in order
    to make it)."""
    cdef uint32_t c
    cdef uint64_t* bits = <uint64_t*>calloc((<size_t>g.n_ctxs + 63) // 64 + 1, sizeof(uint64_t))
    if bits == NULL:
        return NULL
    for c in range(g.n_ctxs):
        if g.ctxs[c].distinct >= 2:
            bits[c >> 6] |= <uint64_t>1 << (c & 63)
    return bits


cdef uint64_t _ix_capacity_for(uint64_t n) noexcept nogil:
    """Capacity that puts n items at a load of 0.6 (at least 64 slots)."""
    cdef uint64_t c = n + n * 2 // 3 + 1
    return c if c > 64 else 64


cdef int _ix_reserve(GraphC* g, IndexC* ix, int kind, uint32_t n, uint64_t need) noexcept nogil:
    cdef uint64_t new_cap
    cdef uint32_t* fresh
    if _ix_room(ix, need):
        return 0                          # load stays at or below 0.75
    new_cap = _ix_capacity_for(need)
    if new_cap < ix.capacity + ix.capacity // 2:
        new_cap = ix.capacity + ix.capacity // 2
    # Doubling refills half as often (and probes shorter runs), at the price of more empty slots:
    # while the index is small next to the budget, that price is nothing.
    if new_cap < 2 * ix.capacity and 2 * ix.capacity * sizeof(uint32_t) <= g.pool.cap // 16:
        new_cap = 2 * ix.capacity
    fresh = <uint32_t*>pool_alloc(&g.pool, new_cap, sizeof(uint32_t))
    if fresh == NULL:
        return -1
    pool_free(&g.pool, ix.slots, ix.capacity, sizeof(uint32_t))
    ix.slots = fresh
    ix_set_capacity(ix, new_cap)
    _ix_fill(g, ix, kind, n)
    return 0


cdef int reserve_nodes_grow(GraphC* g, uint32_t extra, uint32_t payload_bytes) noexcept nogil:
    cdef uint64_t need = <uint64_t>g.n_nodes + extra
    if need > g.max_nodes:
        g.pool.err = ERR_LIMIT
        return -1
    if _grow(g, <void**>&g.nodes, &g.cap_nodes, need, sizeof(NodeC), g.max_nodes) < 0:
        return -1
    if _grow(g, <void**>&g.arena, &g.cap_arena, <uint64_t>g.n_arena + payload_bytes, 1,
             <uint64_t>0xFFFFFFFF) < 0:
        return -1
    return _ix_reserve(g, &g.node_ix, 0, g.n_nodes, need)


cdef int reserve_ctxs_grow(GraphC* g, uint32_t extra) noexcept nogil:
    cdef uint64_t need = <uint64_t>g.n_ctxs + extra
    if _grow(g, <void**>&g.ctxs, &g.cap_ctxs, need, sizeof(CtxC), <uint64_t>0xFFFFFFF0) < 0:
        return -1
    return _ix_reserve(g, &g.ctx_ix, 1, g.n_ctxs, need)


cdef int reserve_edges_grow(GraphC* g, uint32_t extra) noexcept nogil:
    cdef uint64_t need = <uint64_t>g.n_edges + extra
    if need > g.max_edges:
        g.pool.err = ERR_LIMIT
        return -1
    if _grow(g, <void**>&g.edges, &g.cap_edges, need, sizeof(EdgeC), g.max_edges) < 0:
        return -1
    return _ix_reserve(g, &g.edge_ix, 2, g.n_edges, need)


cdef int reserve_trie_grow(GraphC* g, uint32_t extra) noexcept nogil:
    cdef uint64_t need = <uint64_t>g.n_trie + extra
    if _grow(g, <void**>&g.trie, &g.cap_trie, need, sizeof(TrieC), <uint64_t>0xFFFFFFF0) < 0:
        return -1
    return _ix_reserve(g, &g.trie_ix, 3, g.n_trie, need)


cdef uint32_t append_node(GraphC* g, const uint8_t* payload, uint32_t length, uint8_t port,
                          uint8_t level, uint32_t left, uint32_t right) noexcept nogil:
    cdef uint32_t v = g.n_nodes
    cdef NodeC* n = &g.nodes[v]
    if length:                            # STOP and markers pass NULL: memmove(.., NULL, 0) is UB
        memmove(g.arena + g.n_arena, payload, length)
    n.payload_off = g.n_arena
    n.payload_len = <uint16_t>length
    n.poly = poly_bytes(payload, length)
    n.key = node_key(n.poly, port, length)
    n.level = level
    n.port = port
    n.left = left
    n.right = right
    n.count = 0
    n.aux = 0
    n.cat = 0
    n.state = NONE
    n.first = payload[0] if length else 0
    g.n_arena += length
    g.n_nodes += 1
    _ix_put(&g.node_ix, n.key, v)
    return v


cdef uint32_t append_marker(GraphC* g, uint8_t port) noexcept nogil:
    cdef uint32_t v = append_node(g, NULL, 0, port, 0, NONE, NONE)
    g.node_ix.filled -= 1                 # re-indexed below under the marker key
    _ix_unput(&g.node_ix, g.nodes[v].key, v)
    g.nodes[v].poly = MARKER_POLY()
    g.nodes[v].key = node_key(MARKER_POLY(), port, 0)
    _ix_put(&g.node_ix, g.nodes[v].key, v)
    g.port_marker[port] = v
    return v


cdef uint32_t append_ctx(GraphC* g, uint64_t key) noexcept nogil:
    cdef uint32_t c = g.n_ctxs
    g.ctxs[c].key_lo = <uint32_t>key
    g.ctxs[c].key_hi = <uint32_t>(key >> 32)
    g.ctxs[c].head = NONE
    g.ctxs[c].total = 0
    g.ctxs[c].distinct = 0
    g.n_ctxs += 1
    _ix_put(&g.ctx_ix, key, c)
    return c


cdef uint32_t append_edge(GraphC* g, uint32_t ctx, uint32_t dst) noexcept nogil:
    cdef uint32_t e = g.n_edges
    g.edges[e].ctx = ctx
    g.edges[e].dst = dst
    g.edges[e].count = 0
    g.edges[e].stamp = <uint16_t>(g.tokens_fed >> 16)
    g.edges[e].next = g.ctxs[ctx].head
    g.ctxs[ctx].head = e
    g.ctxs[ctx].distinct += 1
    g.n_edges += 1
    if g.ctxs[ctx].distinct == 2:         # a sole edge is not indexed until it has a sibling
        _ix_put(&g.edge_ix, edge_hash(ctx, g.edges[g.edges[e].next].dst), g.edges[e].next)
    if g.ctxs[ctx].distinct >= 2:
        _ix_put(&g.edge_ix, edge_hash(ctx, dst), e)
    return e


cdef uint32_t _trie_new(GraphC* g, uint32_t parent, uint8_t byte, uint64_t* passed) noexcept nogil:
    """A new state (passed: see _trie_probe)."""
    cdef uint32_t s = g.n_trie
    g.trie[s].parent = parent
    g.trie[s].byte = byte
    g.trie[s].node = NONE
    g.trie[s].agg = 0
    g.trie[s].first_child = NONE
    g.trie[s].next_sibling = NONE
    g.trie[s].branching = 0
    g.n_trie += 1
    if parent == NONE:
        g.trie[s].hash = trie_root_hash(byte)     # a root: the empty prefix of port `byte`
    else:
        g.trie[s].hash = trie_roll(g.trie[parent].hash, byte)
        passed[0] += _ix_put(&g.trie_ix, trie_key(g.trie[s].hash), s)
        if g.trie[parent].first_child != NONE:
            g.trie[parent].branching = 1
        g.trie[s].next_sibling = g.trie[parent].first_child
        g.trie[parent].first_child = s
    return s


cdef void trie_insert_node(GraphC* g, uint32_t node) noexcept nogil:
    cdef NodeC* n = &g.nodes[node]
    cdef const uint8_t* p = g.arena + n.payload_off
    cdef uint32_t state, child, j
    cdef uint32_t weight = n.count + 1
    cdef uint64_t passed = 0
    n.state = NONE
    if n.payload_len == 0:
        if node != STOP:
            g.port_marker[n.port] = node  # markers, like STOP, match no input
        return
    state = g.port_root[n.port]
    if state == NONE:
        state = _trie_new(g, NONE, n.port, &passed)
        g.port_root[n.port] = state
    g.trie[state].agg += weight
    for j in range(n.payload_len):
        child = trie_step(g, state, p[j])
        if child == NONE:
            child = _trie_new(g, state, p[j], &passed)
        state = child
        g.trie[state].agg += weight
    g.trie[state].node = node
    n = &g.nodes[node]
    n.state = state


cdef int trie_build(GraphC* g) noexcept nogil:
    """Loading: insert every node's payload into an empty trie, then sum the aggregates bottom-up.
    A payload that extends its left component's (components come first) starts at that state
    instead of the root: the shared prefix costs no probe, which halves the trie's share of
    loading a big brain. -1 (trie partial) if a state would exceed the allocated capacity of the
    trie or of its index, -2 if the states crowd its index (see "Crowded indexes": the slots that
    lookups pass are bounded too, at CROWD_MEAN per lookup). The states, their order and the
    aggregates are those that inserting the nodes one by one would give."""
    cdef uint32_t v, j, start, state, child, s
    cdef uint64_t passed = 0, lookups = 0, bound = crowd_bound(g.trie_ix.capacity)
    cdef NodeC* n
    cdef NodeC* l
    cdef const uint8_t* p
    for v in range(g.n_nodes):
        n = &g.nodes[v]
        n.state = NONE
        if n.payload_len == 0:
            if v != STOP:
                g.port_marker[n.port] = v     # markers, like STOP, match no input
            continue
        p = g.arena + n.payload_off
        start = 0
        state = NONE
        if n.left != NONE and n.left < v:
            l = &g.nodes[n.left]
            if l.state != NONE and l.port == n.port and l.payload_len < n.payload_len and \
                    memcmp(g.arena + l.payload_off, p, l.payload_len) == 0:
                state = l.state
                start = l.payload_len
        if state == NONE:
            state = g.port_root[n.port]
            if state == NONE:
                if g.n_trie >= g.cap_trie:
                    return -1
                state = _trie_new(g, NONE, n.port, &passed)
                g.port_root[n.port] = state
        for j in range(start, n.payload_len):
            child = trie_step_counted(g, state, p[j], &passed)
            if child == NONE:
                if g.n_trie >= g.cap_trie or (g.trie_ix.filled + 2) * 4 > g.trie_ix.capacity * 3 + 4:
                    return -1
                child = _trie_new(g, state, p[j], &passed)
            state = child
        lookups += n.payload_len - start
        if bound != <uint64_t>-1 and passed > bound + CROWD_MEAN * lookups:
            return -2
        g.trie[state].node = v
        n.state = state
    if ix_crowded(&g.trie_ix):
        return -2
    trie_sum_aggregates(g)
    return 0


cdef void trie_sum_aggregates(GraphC* g) noexcept nogil:
    cdef uint32_t v, s
    for s in range(g.n_trie):
        g.trie[s].agg = 0
    for v in range(g.n_nodes):
        if g.nodes[v].state != NONE:
            g.trie[g.nodes[v].state].agg += g.nodes[v].count + 1
    s = g.n_trie
    while s > 0:                          # parents precede their children
        s -= 1
        if g.trie[s].parent != NONE:
            g.trie[g.trie[s].parent].agg += g.trie[s].agg


cdef void trie_add_count(GraphC* g, uint32_t node, uint32_t amount) noexcept nogil:
    cdef uint32_t s = g.nodes[node].state
    while s != NONE:
        g.trie[s].agg += amount
        s = g.trie[s].parent


cdef void ctx_find_many(GraphC* g, const CtxC* src, uint32_t n, uint32_t* out) noexcept nogil:
    """Every lookup is two cache misses (index slot, then the record it names), so the slot of
    context c+16 and the record of context c+8 are fetched while c is looked up."""
    cdef uint32_t c, s
    cdef uint64_t cap = g.ctx_ix.capacity
    for c in range(n):
        if cap and c + 16 < n:
            prefetch(&g.ctx_ix.slots[fastrange(ctx_key(<CtxC*>&src[c + 16]), cap)])
        if c + 8 < n:
            s = ix_candidate(&g.ctx_ix, ctx_key(<CtxC*>&src[c + 8]))
            if s != NONE:
                prefetch(&g.ctxs[s])
        out[c] = ctx_find(g, ctx_key(<CtxC*>&src[c]))


cdef void rebuild_edge_lists(GraphC* g) noexcept nogil:
    """Relink successor lists and recount totals from the edge array (ascending, like incremental
    insertion, so list order is the same as if the edges had been added one by one)."""
    cdef uint32_t c
    for c in range(g.n_ctxs):
        g.ctxs[c].head = NONE
        g.ctxs[c].total = 0
        g.ctxs[c].distinct = 0
    link_edge_lists(g)


cdef void link_edge_lists(GraphC* g) noexcept nogil:
    """rebuild_edge_lists without the reset (the caller set head NONE, total and distinct 0)."""
    cdef uint32_t e, n = g.n_edges
    cdef CtxC* x
    for e in range(n):
        if e + 16 < n:                    # contexts are hundreds of MB, met in edge order
            prefetch(&g.ctxs[g.edges[e + 16].ctx])
        x = &g.ctxs[g.edges[e].ctx]
        g.edges[e].next = x.head
        x.head = e
        x.total += g.edges[e].count
        x.distinct += 1


cdef void rebuild_indexes(GraphC* g) noexcept nogil:
    cdef uint32_t v, p
    _ix_fill(g, &g.node_ix, 0, g.n_nodes)
    _ix_fill(g, &g.ctx_ix, 1, g.n_ctxs)
    _ix_fill(g, &g.edge_ix, 2, g.n_edges)
    # The trie holds exactly the prefixes of live payloads: rebuilding it in place never needs more
    # states than it had.
    for p in range(256):
        g.port_root[p] = NONE
        g.port_marker[p] = NONE
    g.n_trie = 0
    if g.trie_ix.capacity:
        memset(g.trie_ix.slots, 0, g.trie_ix.capacity * sizeof(uint32_t))
    g.trie_ix.filled = 0
    for v in range(g.n_nodes):
        trie_insert_node(g, v)


cdef void _shrink_array(GraphC* g, void** ptr, uint32_t* capacity, uint32_t n, size_t itemsize) noexcept nogil:
    cdef uint64_t want = <uint64_t>n + n // 8 + 64
    if want < capacity[0] and pool_resize(&g.pool, ptr, capacity[0], want, itemsize) == 0:
        capacity[0] = <uint32_t>want


cdef void _shrink_index(GraphC* g, IndexC* ix, int kind, uint32_t n) noexcept nogil:
    cdef uint64_t want = _ix_capacity_for(n)
    cdef uint32_t* fresh
    if want * 5 >= ix.capacity * 4:      # not worth a rebuild for less than a fifth
        return
    fresh = <uint32_t*>pool_alloc(&g.pool, want, sizeof(uint32_t))
    if fresh == NULL:
        return                            # keep the larger index; it is still complete
    pool_free(&g.pool, ix.slots, ix.capacity, sizeof(uint32_t))
    ix.slots = fresh
    ix_set_capacity(ix, want)
    _ix_fill(g, ix, kind, n)


cdef void shrink_to_fit(GraphC* g) noexcept nogil:
    _shrink_array(g, <void**>&g.edges, &g.cap_edges, g.n_edges, sizeof(EdgeC))
    _shrink_array(g, <void**>&g.ctxs, &g.cap_ctxs, g.n_ctxs, sizeof(CtxC))
    _shrink_array(g, <void**>&g.nodes, &g.cap_nodes, g.n_nodes, sizeof(NodeC))
    _shrink_array(g, <void**>&g.trie, &g.cap_trie, g.n_trie, sizeof(TrieC))
    _shrink_array(g, <void**>&g.arena, &g.cap_arena, g.n_arena, 1)
    _shrink_index(g, &g.edge_ix, 2, g.n_edges)
    _shrink_index(g, &g.ctx_ix, 1, g.n_ctxs)
    _shrink_index(g, &g.node_ix, 0, g.n_nodes)
    _shrink_index(g, &g.trie_ix, 3, g.n_trie)


cdef int store_alloc_exact(GraphC* g, uint64_t* caps) noexcept nogil:
    cdef void* blocks[9]
    cdef size_t sizes[9]
    cdef int i, j
    sizes[0] = sizeof(NodeC); sizes[1] = sizeof(CtxC); sizes[2] = sizeof(EdgeC)
    sizes[3] = sizeof(TrieC); sizes[4] = 1
    for i in range(5, 9):
        sizes[i] = sizeof(uint32_t)
    for i in range(9):
        if i < 5 and caps[i] > 0xFFFFFFFFu:
            g.pool.err = ERR_LIMIT
            blocks[i] = NULL
        else:
            blocks[i] = pool_alloc(&g.pool, caps[i], sizes[i])
        if blocks[i] == NULL:
            for j in range(i):
                pool_free(&g.pool, blocks[j], caps[j], sizes[j])
            return -1
    store_free(g)
    g.nodes = <NodeC*>blocks[0]; g.cap_nodes = <uint32_t>caps[0]
    g.ctxs = <CtxC*>blocks[1]; g.cap_ctxs = <uint32_t>caps[1]
    g.edges = <EdgeC*>blocks[2]; g.cap_edges = <uint32_t>caps[2]
    g.trie = <TrieC*>blocks[3]; g.cap_trie = <uint32_t>caps[3]
    g.arena = <uint8_t*>blocks[4]; g.cap_arena = <uint32_t>caps[4]
    g.node_ix.slots = <uint32_t*>blocks[5]; ix_set_capacity(&g.node_ix, caps[5])
    g.ctx_ix.slots = <uint32_t*>blocks[6]; ix_set_capacity(&g.ctx_ix, caps[6])
    g.edge_ix.slots = <uint32_t*>blocks[7]; ix_set_capacity(&g.edge_ix, caps[7])
    g.trie_ix.slots = <uint32_t*>blocks[8]; ix_set_capacity(&g.trie_ix, caps[8])
    memset(g.trie_ix.slots, 0, caps[8] * sizeof(uint32_t))
    for i in range(256):
        g.port_root[i] = NONE
        g.port_marker[i] = NONE
    return 0


cdef uint32_t rebuild_index(GraphC* g, int kind) noexcept nogil:
    if kind == 0:
        return _ix_fill(g, &g.node_ix, 0, g.n_nodes, True)
    return _ix_fill(g, &g.ctx_ix, 1, g.n_ctxs, True)


cdef uint32_t rebuild_edge_index(GraphC* g, const uint64_t* multi) noexcept nogil:
    """rebuild_index for the edges, with the contexts that have two or more successors in the
    bitmap multi instead of counted in the contexts, which need not be linked yet (a bitmap
    fits in cache, where the count of each context was 16 MB of random reads for 16M)."""
    return _ix_fill(g, &g.edge_ix, 2, g.n_edges, True, multi)


cdef void caps_snapshot(GraphC* g, uint64_t* caps) noexcept nogil:
    caps[0] = g.cap_nodes; caps[1] = g.cap_ctxs; caps[2] = g.cap_edges; caps[3] = g.cap_trie
    caps[4] = g.cap_arena; caps[5] = g.node_ix.capacity; caps[6] = g.ctx_ix.capacity
    caps[7] = g.edge_ix.capacity; caps[8] = g.trie_ix.capacity


cdef void _restore_array(GraphC* g, void** ptr, uint32_t* capacity, uint32_t n, uint64_t old,
                         size_t itemsize) noexcept nogil:
    cdef uint64_t want = old if old > n else n
    if want < capacity[0] and pool_resize(&g.pool, ptr, capacity[0], want, itemsize) == 0:
        capacity[0] = <uint32_t>want


cdef void _restore_index(GraphC* g, IndexC* ix, int kind, uint32_t n, uint64_t old) noexcept nogil:
    cdef void* p = ix.slots
    if old >= ix.capacity or old * 3 < <uint64_t>n * 4 or (old == 0 and n):
        return
    if pool_resize(&g.pool, &p, ix.capacity, old, sizeof(uint32_t)) == 0:
        ix.slots = <uint32_t*>p
        ix_set_capacity(ix, old)
        if kind == 3:
            _ix_fill(g, ix, 3, g.n_trie)
        else:
            _ix_fill(g, ix, kind, n)


cdef void caps_restore(GraphC* g, uint64_t* caps) noexcept nogil:
    _restore_array(g, <void**>&g.nodes, &g.cap_nodes, g.n_nodes, caps[0], sizeof(NodeC))
    _restore_array(g, <void**>&g.ctxs, &g.cap_ctxs, g.n_ctxs, caps[1], sizeof(CtxC))
    _restore_array(g, <void**>&g.edges, &g.cap_edges, g.n_edges, caps[2], sizeof(EdgeC))
    _restore_array(g, <void**>&g.trie, &g.cap_trie, g.n_trie, caps[3], sizeof(TrieC))
    _restore_array(g, <void**>&g.arena, &g.cap_arena, g.n_arena, caps[4], 1)
    _restore_index(g, &g.node_ix, 0, g.n_nodes, caps[5])
    _restore_index(g, &g.ctx_ix, 1, g.n_ctxs, caps[6])
    _restore_index(g, &g.edge_ix, 2, g.n_edges, caps[7])
    _restore_index(g, &g.trie_ix, 3, g.n_trie, caps[8])


cdef void cats_free(GraphC* g) noexcept nogil:
    cdef uint64_t d = g.emb_dims
    pool_free(&g.pool, g.cats, g.cap_cats, sizeof(CatC))
    pool_free(&g.pool, g.cat_dims, g.cap_cats * d, sizeof(uint32_t))
    pool_free(&g.pool, g.cat_w, g.cap_cats * d, sizeof(float))
    pool_free(&g.pool, g.cat_head, 2 * <uint64_t>g.cap_cats, sizeof(uint32_t))
    g.cats = NULL
    g.cat_dims = NULL
    g.cat_w = NULL
    g.cat_head = NULL
    g.cap_cats = 0


# ---- Brains used in place (format 4): their contexts, edges and two indexes come from the file
# as the core holds them, so each invariant the loader would have built is checked instead, in
# passes in order over the arrays (mapped_order numbers them so), except the edge index's
# lookups, prefetched VERIFY_AHEAD edges ahead.

cdef enum:
    VERIFY_AHEAD = 16                     # items between a slot's prefetch and its probe


cdef uint32_t verify_lists(GraphC* g, uint32_t nn) noexcept nogil:
    """Format 4 stores each context's successors as one run of edges, in context order, the list
    linking each to the one before it (so each list descends, as lists always do in memory).
    Checks exactly that, each edge's destination below nn and count non-zero, and the contexts'
    distinct and total, in one pass in order over both arrays. Returns the first invalid
    context, nc if edges are left over, or NONE."""
    cdef uint32_t c, j, d, nc = g.n_ctxs, ne = g.n_edges
    cdef uint64_t cursor = 0, total
    cdef CtxC* x
    cdef EdgeC* ed
    for c in range(nc):
        x = &g.ctxs[c]
        d = x.distinct
        if d == 0:
            if x.head != NONE or x.total:
                return c
            continue
        if d > ne - cursor or x.head != cursor + d - 1:
            return c
        total = 0
        for j in range(<uint32_t>cursor, <uint32_t>cursor + d):
            ed = &g.edges[j]
            if ed.ctx != c or ed.dst >= nn or ed.count == 0 or \
                    ed.next != (NONE if j == cursor else j - 1):
                return c
            total += ed.count
        if total != x.total:
            return c
        cursor += d
    return NONE if cursor == ne else nc


cdef uint64_t _scan_slots(IndexC* ix, uint32_t n, uint64_t* miss_cost) noexcept nogil:
    """Occupied slots of an index, each naming a position below n; 2**64-1 if one does not, or if
    the index is over 3/4 full (lookups stop only at an empty slot). Else *miss_cost: over every
    slot, the occupied slots a probe starting there passes (L(L+1)/2 for a run of L, one that
    wraps around the end counted whole).
    The slots are read as four stripes at once, each with its own run: a run's length depends
    on the last, so one stripe alone waits on itself and on memory (a 14M-slot index: 38 ms
    as one stripe, 14 ms as four). Then the stripes' runs are joined."""
    cdef uint64_t cap = ix.capacity, q = cap // 4, i, k, filled = 0, cost = 0, carry = 0, size
    cdef uint64_t r0 = 0, r1 = 0, r2 = 0, r3 = 0, o0, o1, o2, o3
    cdef uint64_t lead, first = 0         # a stripe's leading run; the table's
    cdef bint leading = True
    cdef uint64_t start[5]
    cdef uint64_t tail[4]
    cdef uint32_t a, b, c, d, bad = 0, mask = ix.mask
    cdef const uint32_t* slots = ix.slots
    miss_cost[0] = 0
    if cap == 0:
        return 0
    for k in range(4):
        start[k] = k * q
    start[4] = cap                        # the last stripe takes the remainder
    for i in range(q):                    # branch-free: about half the slots are empty, at random
        a = slots[i]
        b = slots[q + i]
        c = slots[2 * q + i]
        d = slots[3 * q + i]
        o0 = a != 0
        o1 = b != 0
        o2 = c != 0
        o3 = d != 0
        filled += o0 + o1 + o2 + o3
        bad |= (ix_value(a, mask) >= n) & o0 | (ix_value(b, mask) >= n) & o1 | \
            (ix_value(c, mask) >= n) & o2 | (ix_value(d, mask) >= n) & o3
        r0 = (r0 + 1) & (0 - o0)
        r1 = (r1 + 1) & (0 - o1)
        r2 = (r2 + 1) & (0 - o2)
        r3 = (r3 + 1) & (0 - o3)
        cost += r0 + r1 + r2 + r3
    for i in range(4 * q, cap):
        a = slots[i]
        o3 = a != 0
        filled += o3
        bad |= (ix_value(a, mask) >= n) & o3
        r3 = (r3 + 1) & (0 - o3)
        cost += r3
    if bad or filled * 4 > cap * 3:
        return <uint64_t>-1
    tail[0] = r0
    tail[1] = r1
    tail[2] = r2
    tail[3] = r3
    # Each stripe counted its runs from its own start: a run that goes on from the stripe before
    # (carry slots long) adds carry to each of its slots in this one.
    for k in range(4):
        size = start[k + 1] - start[k]
        lead = 0
        while lead < size and slots[start[k] + lead]:
            lead += 1
        cost += carry * lead
        carry = carry + size if lead == size else tail[k]
        if leading:
            first += lead
            leading = lead == size
    miss_cost[0] = cost + carry * first   # the last run goes on into the first
    return filled


cdef uint64_t index_filled(IndexC* ix, uint32_t n) noexcept nogil:
    cdef uint64_t cost
    cdef uint64_t filled = _scan_slots(ix, n, &cost)
    if filled != <uint64_t>-1 and cost > crowd_bound(ix.capacity):
        return IX_CROWDED_FILLED
    return filled


def _miss_cost(const uint32_t[::1] slots):
    """Tests: _scan_slots of these slots as an index (occupied, miss cost; None if over 3/4)."""
    cdef IndexC ix
    cdef uint64_t cost, filled
    ix.slots = <uint32_t*>&slots[0] if slots.shape[0] else NULL
    ix_set_capacity(&ix, slots.shape[0])
    ix.filled = 0
    filled = _scan_slots(&ix, NONE, &cost)
    return None if filled == <uint64_t>-1 else (filled, cost)


def _pattern_keys(const uint8_t[::1] payload, uint8_t port=0):
    """Tests and tools/bench_flood.py: (node index key, trie index key) of a pattern with this
    payload on a port, as the graph computes them (where their probes start)."""
    cdef uint32_t n = payload.shape[0], h = trie_root_hash(port), j
    if n == 0:
        raise ValueError("a pattern has a payload of at least one byte")
    for j in range(n):
        h = trie_roll(h, payload[j])
    return node_key(poly_bytes(&payload[0], n), port, n), trie_key(h)


cdef uint32_t verify_context_index(GraphC* g) noexcept nogil:
    """Format 4 numbers the contexts in the order of their index slots, so the index is checked in
    one pass in order over both: occupied slot number k names context k with its key's tag, its
    probe from the key's home slot meets no empty slot, and no entry of the same key is on that
    path (a lookup would stop there). Then each context is found as itself and the index holds
    nothing else. Returns the first context that is not, nc for a damaged index, IX_CROWDED for
    a crowded one (whose paths would take quadratic time to check), or NONE."""
    cdef uint32_t nc = g.n_ctxs, k = 0, s, mask = g.ctx_ix.mask
    cdef uint64_t cap = g.ctx_ix.capacity, filled = index_filled(&g.ctx_ix, nc)
    cdef uint64_t i, h, p, path, tail
    cdef int64_t last_empty = -1          # the last empty slot before i
    cdef uint64_t key
    cdef const uint32_t* slots = g.ctx_ix.slots
    if filled == IX_CROWDED_FILLED:
        return IX_CROWDED
    if filled == <uint64_t>-1 or filled != nc or (cap == 0 and nc):
        return nc
    if nc == 0:
        g.ctx_ix.filled = 0
        return NONE
    tail = cap - 1                        # the last empty slot (there is one: filled <= 3/4)
    while slots[tail]:
        tail -= 1
    for i in range(cap):
        s = slots[i]
        if s == 0:
            last_empty = <int64_t>i
            continue
        key = ctx_key(&g.ctxs[k])
        if ix_value(s, mask) != k or not ix_tag_matches(s, key, mask):
            return k
        h = fastrange(key, cap)
        if h <= i:
            if last_empty >= <int64_t>h:
                return k
            path = i - h
        else:                             # the probe wrapped around the end of the table
            if last_empty >= 0 or tail >= h:
                return k
            path = i + cap - h
        for p in range(1, path + 1):      # the entries before it on the path: contexts k-1, k-2 ...
            if ix_tag_matches(slots[(i + cap - p) % cap], key, mask) and \
                    ctx_key(&g.ctxs[(k + <uint64_t>nc - p % nc) % nc]) == key:
                return k
        k += 1
    g.ctx_ix.filled = nc
    return NONE


cdef uint32_t verify_edge_index(GraphC* g, uint32_t start, uint32_t stop,
                                uint64_t* found) noexcept nogil:
    """Edges start..stop-1: each of a context with two or more successors is found through the
    index as itself (counted in found). Returns the first that is not, or NONE."""
    cdef uint32_t e, ne = g.n_edges, nc = g.n_ctxs
    cdef uint64_t cap = g.edge_ix.capacity
    cdef EdgeC* ed
    for e in range(start, stop):
        if e + VERIFY_AHEAD < stop and cap:   # (a sole edge's prefetch would be a wasted miss)
            ed = &g.edges[e + VERIFY_AHEAD]
            if ed.ctx < nc and g.ctxs[ed.ctx].distinct >= 2:
                prefetch(&g.edge_ix.slots[fastrange(edge_hash(ed.ctx, ed.dst), cap)])
        ed = &g.edges[e]
        if ed.ctx >= nc:                  # (verify_lists may still be on its way to it)
            return e
        if g.ctxs[ed.ctx].distinct < 2:   # not indexed (the contexts are met in order)
            continue
        found[0] += 1
        if cap == 0 or edge_find(g, ed.ctx, ed.dst) != e:
            return e
    return NONE


cdef void mapped_order(GraphC* g, uint32_t* ctx_order, uint32_t* ctx_rank, uint32_t* order,
                       uint32_t* rank) noexcept nogil:
    cdef uint32_t c, e, j, k = 0, d, s, cursor = 0, mask = g.ctx_ix.mask
    cdef uint64_t i
    for i in range(g.ctx_ix.capacity):
        s = g.ctx_ix.slots[i]
        if s:
            c = ix_value(s, mask)
            ctx_order[k] = c
            ctx_rank[c] = k
            k += 1
    for k in range(g.n_ctxs):
        c = ctx_order[k]
        d = g.ctxs[c].distinct
        e = g.ctxs[c].head
        j = cursor + d
        while e != NONE:                  # the list runs newest first: fill the run backwards
            j -= 1
            order[j] = e
            rank[e] = j
            e = g.edges[e].next
        cursor += d


cdef void mapped_edge_index(GraphC* g, const uint32_t* order, const uint32_t* ctx_rank,
                            uint32_t* slots) noexcept nogil:
    cdef IndexC ix                        # the same capacity, into the caller's slots
    cdef uint32_t j
    cdef EdgeC* ed
    ix.slots = slots
    ix_set_capacity(&ix, g.edge_ix.capacity)
    ix.filled = 0
    memset(slots, 0, ix.capacity * sizeof(uint32_t))
    for j in range(g.n_edges):
        ed = &g.edges[order[j]]
        if g.ctxs[ed.ctx].distinct >= 2:  # (a sole edge is not indexed)
            _ix_put(&ix, edge_hash(ctx_rank[ed.ctx], ed.dst), j)
