# The graph's storage: dense arrays of nodes, contexts, edges and trie states, their indexes, and the
# payload arena; all owned by GraphC.pool. Lookups are inline and cannot fail; growth can (returns -1
# with pool.err set) and commits only after the new block exists.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcmp
from melvin._core.defs cimport *
from melvin._core.mem cimport PoolC


# Successors of the busiest contexts sorted by (port, payload), with prefix sums of their counts,
# so the mass of the tokens that start with a given byte string is two binary searches (the
# spelling statistics of scoring and predict). Query scratch owned by the Core, rebuilt lazily
# after the graph changes.
cdef struct ExclSlotC:
    uint32_t ctx1                  # context id + 1 (0: empty slot)
    uint32_t n                     # successors
    uint64_t off                   # their ids at ids[off:off+n], prefix sums at pre[off+i:off+i+n+1]
    uint64_t pre_off
    uint32_t d0                    # distinct first units (a first byte on a port, or an empty token)
    uint32_t first_off             # summed counts per first byte on port 0 at first[first_off:+256]


cdef struct ExclC:
    uint64_t version               # graph version + 1 the contents belong to (0: empty)
    ExclSlotC* slots               # open addressing on the context id, EXCL_SLOTS entries
    uint32_t n_ctx                 # contexts held
    uint32_t walks                 # busy-context walks since the graph last changed
    uint32_t* ids
    uint32_t* keys                 # per id: its payload's bytes 1..4, zero-padded, big-endian
    uint32_t* pre
    uint32_t* first                # 256 per held context, in the order they were built
    uint64_t used_ids, used_pre, cap_ids, cap_pre, cap_first
    uint32_t n_small               # of n_ctx, those below EXCL_BUSY successors
    uint64_t small_ids


cdef struct GraphC:
    PoolC pool
    ExclC excl                     # empty until a query meets a busy context; not in memory_bytes
    NodeC* nodes
    CtxC* ctxs
    EdgeC* edges
    TrieC* trie
    uint8_t* arena
    uint32_t n_nodes, cap_nodes
    uint32_t n_ctxs, cap_ctxs
    uint32_t n_edges, cap_edges
    uint32_t n_trie, cap_trie
    uint32_t n_arena, cap_arena
    IndexC node_ix
    IndexC ctx_ix
    IndexC edge_ix
    IndexC trie_ix
    CatC* cats                     # categories (embed.pxd)
    uint32_t* cat_dims             # their profiles, emb_dims per category
    float* cat_w
    uint32_t* cat_head             # lookup chains by the profile's strongest dim, 2 * cap_cats
    uint32_t n_cats, cap_cats
    uint32_t port_root[256]        # trie root state of each port (NONE until the port is used)
    uint32_t port_marker[256]      # node that switches the episode to this port (NONE until used)
    # limits
    uint32_t max_nodes
    uint32_t max_edges
    uint32_t max_payload
    uint32_t max_levels
    uint32_t context_len
    uint32_t form_min_count
    uint32_t n_byte_orders
    uint32_t byte_orders[8]        # lengths of the byte-suffix contexts, ascending
    uint32_t attn_heads            # attention heads over the episode's tokens (0: off)
    uint32_t word_tokens           # text-port patterns stay within one word (see _splits_words)
    uint32_t emb_dims              # non-zeros of an embedding (0: no embeddings, no categories)
    uint32_t max_cats
    # counters
    uint64_t total_count           # sum of node counts (order-0 normaliser)
    uint64_t bytes_fed
    uint64_t tokens_fed
    uint64_t episodes
    uint64_t formed
    uint64_t pruned_nodes
    uint64_t pruned_edges
    uint64_t pruned_ctxs
    uint64_t prunes


cdef int store_init(GraphC* g) noexcept nogil
cdef void store_free(GraphC* g) noexcept nogil
# The categories' arrays (embed.pxd); n_cats is left to the caller.
cdef void cats_free(GraphC* g) noexcept nogil
cdef size_t store_accounted(GraphC* g) noexcept nogil

# Ensure room for `extra` more items (array and index). -1 with g.pool.err on failure.
# The reserve_* below answer the common case (room already there) inline and call these otherwise.
cdef int reserve_nodes_grow(GraphC* g, uint32_t extra, uint32_t payload_bytes) noexcept nogil
cdef int reserve_ctxs_grow(GraphC* g, uint32_t extra) noexcept nogil
cdef int reserve_edges_grow(GraphC* g, uint32_t extra) noexcept nogil
cdef int reserve_trie_grow(GraphC* g, uint32_t extra) noexcept nogil

# Appends; the caller reserved room first, so these cannot fail.
cdef uint32_t append_node(GraphC* g, const uint8_t* payload, uint32_t length, uint8_t port,
                          uint8_t level, uint32_t left, uint32_t right) noexcept nogil
cdef uint32_t append_ctx(GraphC* g, uint64_t key) noexcept nogil
# A port's marker: an empty-payload node that, learned between two streams, bridges them.
cdef uint32_t append_marker(GraphC* g, uint8_t port) noexcept nogil
cdef uint32_t append_edge(GraphC* g, uint32_t ctx, uint32_t dst) noexcept nogil
# Walks/extends the trie along the node's payload; needs reserve_trie(len + 1) first.
cdef void trie_insert_node(GraphC* g, uint32_t node) noexcept nogil
# Loading: every node's payload into the empty trie, aggregates included; -1 (trie partial) if a
# new state would exceed the allocated capacity of the trie or its index, -2 if its index crowds.
cdef int trie_build(GraphC* g) noexcept nogil
# Recompute every state's aggregate from the node counts.
cdef void trie_sum_aggregates(GraphC* g) noexcept nogil
# Add to the subtree aggregates along the node's trie path (after its count changed).
cdef void trie_add_count(GraphC* g, uint32_t node, uint32_t amount) noexcept nogil

# Allocate empty arrays and indexes of exactly these capacities (nodes, contexts, edges, trie, arena,
# node/context/edge/trie index); all or nothing. For loading.
cdef int store_alloc_exact(GraphC* g, uint64_t* caps) noexcept nogil
# Refill one index (0 nodes, 1 contexts) from its dense array, in place. Returns the first item
# that repeats an earlier one's identity (the index is then partial), else NONE.
cdef uint32_t rebuild_index(GraphC* g, int kind) noexcept nogil
# Rebuild every index and the trie from the dense arrays, in place (no allocation).
cdef void rebuild_indexes(GraphC* g) noexcept nogil
cdef void rebuild_edge_lists(GraphC* g) noexcept nogil
cdef void link_edge_lists(GraphC* g) noexcept nogil
# Loading: the edge index (rebuild_index's return), given a bitmap of the contexts with two or
# more successors.
cdef uint32_t rebuild_edge_index(GraphC* g, const uint64_t* multi) noexcept nogil
# out[c] = ctx_find(g, key of src[c]) for c < n, with the cache misses overlapped (merge, check).
cdef void ctx_find_many(GraphC* g, const CtxC* src, uint32_t n, uint32_t* out) noexcept nogil
# Loading refuses an index whose items crowd into runs far longer than hashing gives (see
# store.pyx, "Crowded indexes"): rebuild_index and rebuild_edge_index return IX_CROWDED,
# trie_build -2, index_filled IX_CROWDED_FILLED, verify_context_index IX_CROWDED.
cdef extern from *:
    """
    #define MELVIN_IX_CROWDED 0xFFFFFFFDu
    #define MELVIN_IX_CROWDED_FILLED 0xFFFFFFFFFFFFFFFEull
    """
    const uint32_t IX_CROWDED "MELVIN_IX_CROWDED"
    const uint64_t IX_CROWDED_FILLED "MELVIN_IX_CROWDED_FILLED"
# Loading a brain used in place (format 4): its lists and indexes checked instead of rebuilt.
# Each returns NONE if all is well (see store.pyx for what else).
cdef uint32_t verify_lists(GraphC* g, uint32_t nn) noexcept nogil
cdef uint32_t verify_context_index(GraphC* g) noexcept nogil
# Occupied slots, each naming an item below n, in an index at most 3/4 full and not crowded;
# else 2**64-1 (IX_CROWDED_FILLED if crowded).
cdef uint64_t index_filled(IndexC* ix, uint32_t n) noexcept nogil
# Needs index_filled(edge index) checked first; found counts the indexed edges met.
cdef uint32_t verify_edge_index(GraphC* g, uint32_t start, uint32_t stop,
                                uint64_t* found) noexcept nogil
# Format 4's order: contexts by their index slot (ctx_order[k] = the context that becomes k,
# ctx_rank its inverse), then each context's successors as one run, oldest first (order[j] =
# the edge that becomes edge j, rank its inverse). Needs a consistent graph.
cdef void mapped_order(GraphC* g, uint32_t* ctx_order, uint32_t* ctx_rank, uint32_t* order,
                       uint32_t* rank) noexcept nogil
# The edge index of that numbering, into slots (edge_ix.capacity of them).
cdef void mapped_edge_index(GraphC* g, const uint32_t* order, const uint32_t* ctx_rank,
                            uint32_t* slots) noexcept nogil
# After a failed operation: shrink every table whose capacity grew since `snapshot` back to the
# larger of its snapshot capacity and what it now holds, in place (no allocation, cannot fail).
cdef void caps_snapshot(GraphC* g, uint64_t* caps) noexcept nogil
cdef void caps_restore(GraphC* g, uint64_t* caps) noexcept nogil
# Give back unused capacity (best effort; never fails).
cdef void shrink_to_fit(GraphC* g) noexcept nogil


# An index slot holds position + 1 in its low bits (0: empty) and, in the bits above, bits of the
# item's hash (which fastrange does not use to place it): a probe compares those tag bits first and
# reads the record only on a match, so passing an occupied slot rarely costs a cache miss. The
# number of position bits follows the capacity (positions stay below capacity + 256: every item
# is indexed except the trie's port roots), so a refill after the index is resized keeps them
# consistent; with 2**24 slots 7 tag bits remain.

cdef extern from *:
    """
    static inline uint32_t melvin_ix_mask(uint64_t capacity) {
        uint64_t m = capacity + 256;
        return m >= 0xFFFFFFFFull ? 0xFFFFFFFFu : (uint32_t)(0xFFFFFFFFu >> __builtin_clz((uint32_t)m));
    }
    """
    uint32_t ix_mask "melvin_ix_mask"(uint64_t capacity) noexcept nogil


cdef inline void ix_set_capacity(IndexC* ix, uint64_t capacity) noexcept nogil:
    ix.capacity = capacity
    ix.mask = ix_mask(capacity)


cdef inline uint32_t ix_slot(uint64_t h, uint32_t v, uint32_t mask) noexcept nogil:
    return (<uint32_t>h & ~mask) | (v + 1)


cdef inline bint ix_tag_matches(uint32_t slot, uint64_t h, uint32_t mask) noexcept nogil:
    return ((slot ^ <uint32_t>h) & ~mask) == 0


cdef inline uint32_t ix_value(uint32_t slot, uint32_t mask) noexcept nogil:
    return (slot & mask) - 1


cdef inline uint32_t ix_candidate(IndexC* ix, uint64_t h) noexcept nogil:
    """The first position a probe for h would compare (NONE if none before an empty slot within
    8 slots): what to prefetch ahead of a lookup."""
    cdef uint64_t i
    cdef uint32_t s, m, mask
    if ix.capacity == 0:
        return NONE
    i = fastrange(h, ix.capacity)
    mask = ix.mask
    for m in range(8):
        s = ix.slots[i]
        if s == 0:
            return NONE
        if ix_tag_matches(s, h, mask):
            return ix_value(s, mask)
        i += 1
        if i == ix.capacity:
            i = 0
    return NONE


cdef inline uint32_t node_find(GraphC* g, uint64_t key, const uint8_t* payload, uint32_t length,
                               uint8_t port) noexcept nogil:
    cdef uint64_t cap = g.node_ix.capacity
    if g.node_ix.capacity == 0:
        return NONE
    cdef uint64_t i = fastrange(key, cap)
    cdef uint32_t s, v, mask = g.node_ix.mask
    cdef NodeC* n
    while True:
        s = g.node_ix.slots[i]
        if s == 0:
            return NONE
        if ix_tag_matches(s, key, mask):
            v = ix_value(s, mask)
            n = &g.nodes[v]
            if n.key == key and n.port == port and n.payload_len == length and \
                    memcmp(g.arena + n.payload_off, payload, length) == 0:
                return v
        i += 1
        if i == cap:
            i = 0


cdef inline uint32_t ctx_find(GraphC* g, uint64_t key) noexcept nogil:
    cdef uint64_t cap = g.ctx_ix.capacity
    if g.ctx_ix.capacity == 0:
        return NONE
    cdef uint64_t i = fastrange(key, cap)
    cdef uint32_t s, v, mask = g.ctx_ix.mask
    while True:
        s = g.ctx_ix.slots[i]
        if s == 0:
            return NONE
        if ix_tag_matches(s, key, mask):
            v = ix_value(s, mask)
            if g.ctxs[v].key_lo == <uint32_t>key and g.ctxs[v].key_hi == <uint32_t>(key >> 32):
                return v
        i += 1
        if i == cap:
            i = 0


cdef inline uint32_t edge_find(GraphC* g, uint32_t ctx, uint32_t dst) noexcept nogil:
    cdef uint64_t cap = g.edge_ix.capacity
    if g.edge_ix.capacity == 0:
        return NONE
    cdef uint64_t h = edge_hash(ctx, dst)
    cdef uint64_t i = fastrange(h, cap)
    cdef uint32_t s, v, mask = g.edge_ix.mask
    cdef EdgeC* e
    if g.ctxs[ctx].distinct < 2:          # a sole edge is not indexed: the list has it
        v = g.ctxs[ctx].head
        return v if v != NONE and g.edges[v].dst == dst else NONE
    while True:
        s = g.edge_ix.slots[i]
        if s == 0:
            return NONE
        if ix_tag_matches(s, h, mask):
            v = ix_value(s, mask)
            e = &g.edges[v]
            if e.ctx == ctx and e.dst == dst:
                return v
        i += 1
        if i == cap:
            i = 0


cdef inline uint32_t _trie_probe(GraphC* g, uint64_t h, uint32_t parent, uint8_t byte,
                                 uint64_t* passed) noexcept nogil:
    """The state under `parent` for `byte`, whose prefix key is h (NONE if none). Adds the
    occupied slots passed to *passed (loading bounds them; elsewhere a local nobody reads,
    which the compiler drops)."""
    cdef uint64_t cap = g.trie_ix.capacity
    if cap == 0:
        return NONE
    cdef uint64_t i = fastrange(h, cap)
    cdef uint32_t s, v, mask = g.trie_ix.mask
    cdef TrieC* t
    while True:
        s = g.trie_ix.slots[i]
        if s == 0:
            return NONE
        if ix_tag_matches(s, h, mask):
            v = ix_value(s, mask)
            t = &g.trie[v]
            if t.parent == parent and t.byte == byte:
                return v
        passed[0] += 1
        i += 1
        if i == cap:
            i = 0


cdef inline uint32_t trie_child(GraphC* g, uint32_t state, uint8_t byte) noexcept nogil:
    cdef uint64_t passed = 0
    return _trie_probe(g, trie_key(trie_roll(g.trie[state].hash, byte)), state, byte, &passed)


# The child of a trie state for a byte (NONE if none). A state with one child: reading it is one
# cache miss where the index costs two (slot, then record), and a leaf needs no probe at all. A
# branching state's first child is rarely the one wanted (the newest: 5.5% of branching steps of
# the greedy walk on big.txt), so the index is asked at once.
cdef inline uint32_t _trie_step_keyed(GraphC* g, uint32_t state, uint8_t byte, uint64_t key,
                                      uint64_t* passed) noexcept nogil:
    """trie_step, given the child's index key (passed: see _trie_probe)."""
    cdef uint32_t child = g.trie[state].first_child
    if child == NONE:
        return NONE
    if g.trie[state].branching:
        return _trie_probe(g, key, state, byte, passed)
    return child if g.trie[child].byte == byte else NONE


cdef inline uint32_t trie_step_counted(GraphC* g, uint32_t state, uint8_t byte,
                                       uint64_t* passed) noexcept nogil:
    """trie_step, adding the index slots its probe passed to *passed (loading bounds them)."""
    return _trie_step_keyed(g, state, byte, trie_key(trie_roll(g.trie[state].hash, byte)), passed)


cdef inline uint32_t trie_step(GraphC* g, uint32_t state, uint8_t byte) noexcept nogil:
    cdef uint64_t passed = 0
    return trie_step_counted(g, state, byte, &passed)


cdef enum:
    WALK_AHEAD = 8                      # depths of the greedy walk whose index slots are asked at once


cdef inline uint32_t match_longest(GraphC* g, uint8_t port, const uint8_t* data, size_t n,
                                   uint32_t* length) noexcept nogil:
    """Greedy longest match of data[0:n] on a port: the longest node payload that prefixes the
    data (NONE if the port has no node for data[0]). A branching state is found through the
    index by its prefix's key, which the data alone gives: the slots of the next WALK_AHEAD
    depths are prefetched together, so the walk waits on memory about once per WALK_AHEAD
    bytes instead of twice per byte."""
    cdef uint32_t state = g.port_root[port]
    cdef uint32_t best = NONE, h
    cdef size_t j, k, ahead = 0
    cdef size_t limit = n if n < g.max_payload else g.max_payload
    cdef uint64_t keys[WALK_AHEAD]
    cdef uint64_t passed = 0
    length[0] = 0
    if state == NONE:
        return NONE
    for j in range(limit):
        if j == ahead:
            # keys (and slots) of depths j .. j + WALK_AHEAD - 1
            h = g.trie[state].hash
            k = 0
            while k < WALK_AHEAD and j + k < limit:
                h = trie_roll(h, data[j + k])
                keys[k] = trie_key(h)
                # (the text root's children are laid out at init: their depth needs no probe)
                if g.trie_ix.capacity and (j + k != 0 or state != 0):
                    prefetch(&g.trie_ix.slots[fastrange(keys[k], g.trie_ix.capacity)])
                k += 1
            ahead = j + WALK_AHEAD
        if state == 0 and port == 0:
            state = 1 + data[j]          # text-port bytes: states 1..256 are laid out at init
        else:
            state = _trie_step_keyed(g, state, data[j], keys[j + WALK_AHEAD - ahead], &passed)
            if state == NONE:
                break
        if g.trie[state].node != NONE:
            best = g.trie[state].node
            length[0] = <uint32_t>(j + 1)
    return best


# Room for `extra` more items (and payload bytes): every learned token reserves before it appends,
# and the tables rarely need to grow, so the test that they need not is inline (as calls it was
# 6% of training's instructions). The conditions are exactly those under which the _grow
# functions return 0 without doing anything.
cdef inline bint _ix_room(IndexC* ix, uint64_t need) noexcept nogil:
    return ix.capacity != 0 and need * 4 <= ix.capacity * 3


cdef inline int reserve_nodes(GraphC* g, uint32_t extra, uint32_t payload_bytes) noexcept nogil:
    cdef uint64_t need = <uint64_t>g.n_nodes + extra
    if need <= g.max_nodes and need <= g.cap_nodes and \
            <uint64_t>g.n_arena + payload_bytes <= g.cap_arena and _ix_room(&g.node_ix, need):
        return 0
    return reserve_nodes_grow(g, extra, payload_bytes)


cdef inline int reserve_ctxs(GraphC* g, uint32_t extra) noexcept nogil:
    cdef uint64_t need = <uint64_t>g.n_ctxs + extra
    if need <= g.cap_ctxs and _ix_room(&g.ctx_ix, need):
        return 0
    return reserve_ctxs_grow(g, extra)


cdef inline int reserve_edges(GraphC* g, uint32_t extra) noexcept nogil:
    cdef uint64_t need = <uint64_t>g.n_edges + extra
    if need <= g.max_edges and need <= g.cap_edges and _ix_room(&g.edge_ix, need):
        return 0
    return reserve_edges_grow(g, extra)


cdef inline int reserve_trie(GraphC* g, uint32_t extra) noexcept nogil:
    cdef uint64_t need = <uint64_t>g.n_trie + extra
    if need <= g.cap_trie and _ix_room(&g.trie_ix, need):
        return 0
    return reserve_trie_grow(g, extra)
