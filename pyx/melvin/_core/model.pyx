# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
from libc.string cimport memcpy, memmove, memcmp, memset
from libc.math cimport log2
from melvin._core.mem cimport ERR_NONE, ERR_CAP, ERR_LIMIT, ERR_NOMEM
from libc.stdlib cimport malloc, realloc, free
cdef extern from "stdlib.h" nogil:
    void qsort_r(void* base, size_t nmemb, size_t size,
                 int (*compar)(const void*, const void*, void*) noexcept nogil, void* arg)
from melvin._core.store cimport (ExclC, ExclSlotC, trie_step, append_marker, reserve_nodes, reserve_ctxs, reserve_edges, reserve_trie, append_node,
                                 append_ctx, append_edge, trie_insert_node, trie_add_count, rebuild_indexes,
                                 rebuild_edge_lists, shrink_to_fit, ctx_find, edge_find, match_longest,
                                 node_find, trie_sum_aggregates, ctx_find_many,
                                 ix_mask, ix_tag_matches, ix_value, ix_candidate)
from melvin._core.embed cimport cat_key, is_cat_key, categorize, cats_rebuild, cats_map, cats_bytes

# Pruning sheds down to this share of the cap that was hit, so training does not prune every token.
cdef double PRUNE_SHARE = 0.7


# BASE**k for the byte-suffix hashes (byte contexts are at most 64 bytes).
cdef uint64_t POLY_POW[65]
POLY_POW[0] = 1
for _k in range(1, 65):
    POLY_POW[_k] = POLY_POW[_k - 1] * POLY_BASE()


cdef void trace_reset(TraceC* t) noexcept nogil:
    # Every episode starts in the STOP context: what follows STOP is what starts episodes.
    t.ids[0] = STOP
    t.n = 1
    t.pending = NONE
    t.n_seen = 0
    _trace_unprime(t)


cdef inline void _trace_unprime(TraceC* t) noexcept nogil:
    t.n_next = 0
    _trace_forget_guess(t)


cdef inline void _trace_forget_guess(TraceC* t) noexcept nogil:
    """Drop what learning prefetched on a guess of the next token (formation or pruning may
    have changed how it is matched, or remapped its id)."""
    t.n_spec = 0
    t.spec_for = NONE
    t.primed_for = NONE


cdef void trace_push(TraceC* t, uint32_t v, uint32_t context_len) noexcept nogil:
    _trace_unprime(t)
    _trace_shift(t, v, context_len)


cdef inline void _trace_shift(TraceC* t, uint32_t v, uint32_t context_len) noexcept nogil:
    """trace_push without clearing learning's look-ahead (learning keeps or clears it itself)."""
    cdef uint32_t n = t.n + 1 if t.n < context_len else context_len
    memmove(t.ids + 1, t.ids, (n - 1) * sizeof(uint32_t))
    t.ids[0] = v
    t.n = n
    t.seen[t.n_seen & (ATTN_WINDOW - 1)] = v
    t.n_seen += 1


cdef inline uint32_t _orders(GraphC* g, uint32_t n) noexcept nogil:
    return n if n < g.context_len else g.context_len


cdef inline uint32_t trace_orders(GraphC* g, TraceC* t) noexcept nogil:
    """Token-context orders available: the trace keeps MAX_CONTEXT tokens (byte contexts reach
    back through them), of which the last context_len form token contexts."""
    return _orders(g, t.n)


cdef inline uint32_t trace_keys(GraphC* g, TraceC* t, uint64_t* keys) noexcept nogil:
    return _keys_of(g, NULL, 0, t.ids, t.n, keys)


cdef inline uint32_t _keys_after(GraphC* g, TraceC* t, uint32_t a, uint32_t b,
                                 uint64_t* keys) noexcept nogil:
    """trace_keys once a, then b (unless NONE), are pushed: the keys of a step ahead."""
    cdef uint32_t pre[2]
    pre[0] = a if b == NONE else b
    pre[1] = a
    return _keys_of(g, pre, 1 if b == NONE else 2, t.ids, t.n, keys)


cdef inline uint32_t _id_at(const uint32_t* pre, uint32_t n_pre, const uint32_t* ids,
                            uint32_t i) noexcept nogil:
    return pre[i] if i < n_pre else ids[i - n_pre]


cdef inline uint32_t _keys_of(GraphC* g, const uint32_t* pre, uint32_t n_pre, const uint32_t* ids,
                              uint32_t n_ids, uint64_t* keys) noexcept nogil:
    """Context keys of the history pre[0:n_pre] then ids[0:n_ids] (most recent first, as the
    trace keeps at most MAX_CONTEXT), least specific first: byte suffixes of the history (1, 2,
    ... bytes, stable however the history was segmented), then the last 1..n tokens. Returns how
    many."""
    cdef uint32_t k = 0, j, i = 0, u, n_keys = 0, n_marks = 0, done = 0
    cdef uint32_t n_all = n_ids + n_pre if n_ids + n_pre < MAX_CONTEXT else MAX_CONTEXT
    cdef uint32_t n_orders = g.n_byte_orders
    cdef uint32_t mark_at[4]
    cdef uint64_t mark_key[4]
    cdef NodeC* nd
    cdef const uint8_t* p
    cdef const uint8_t* start
    cdef uint64_t h = 0
    # Every suffix's poly_bytes in one pass over the history, most recent first: the hash of the
    # last L bytes is that of the last L-1 plus (byte + 1) * BASE**(L-1), so the orders share the
    # work. A token that ends no suffix adds its own poly_bytes (its node's poly) times
    # BASE**(bytes after it) at once; only a token a suffix ends in is taken byte by byte. Port
    # markers carry no bytes but do change what follows: a marker inside a context's span salts
    # that context's key.
    cdef uint32_t order = g.byte_orders[0] if n_orders else 0
    while k < n_orders and i < n_all:
        u = _id_at(pre, n_pre, ids, i)
        if u == STOP:
            break
        nd = &g.nodes[u]
        i += 1
        if nd.payload_len == 0:
            if n_marks < 4:
                mark_at[n_marks] = done
                mark_key[n_marks] = nd.key
                n_marks += 1
            continue
        if done + nd.payload_len < order:
            h += nd.poly * POLY_POW[done]
            done += nd.payload_len
            continue
        start = g.arena + nd.payload_off
        p = start + nd.payload_len
        while p != start:
            p -= 1
            h += (<uint64_t>p[0] + 1) * POLY_POW[done]
            done += 1
            if done == order:
                keys[n_keys] = ctx_key_from_poly(h, done, False)
                for j in range(n_marks):
                    if mark_at[j] < done:
                        keys[n_keys] = fmix64(keys[n_keys] ^ mark_key[j])
                n_keys += 1
                k += 1
                if k == n_orders:
                    break
                order = g.byte_orders[k]
    if k < n_orders and i < n_all and _id_at(pre, n_pre, ids, i) == STOP:
        # near the start of an episode: the whole short history
        keys[n_keys] = ctx_key_from_poly(h, done, True)
        for j in range(n_marks):
            keys[n_keys] = fmix64(keys[n_keys] ^ mark_key[j])
        n_keys += 1
    keys[n_keys] = ctx_key_first(g.nodes[_id_at(pre, n_pre, ids, 0)].key)
    n_keys += 1
    for k in range(1, _orders(g, n_all)):
        keys[n_keys] = ctx_key_extend(keys[n_keys - 1], g.nodes[_id_at(pre, n_pre, ids, k)].key)
        n_keys += 1
    return n_keys


cdef inline uint8_t _byte_kind(uint32_t length) noexcept nogil:
    return KIND_SHORT if length <= 3 else KIND_MID if length < 12 else KIND_LONG


cdef uint32_t trace_contexts(GraphC* g, TraceC* t, uint32_t* cis) noexcept nogil:
    """The contexts in interpolation order, least specific first: the byte contexts and the
    token contexts merged by how many bytes they span (a token context after the byte contexts no
    longer than it; STOP spans the whole episode). Putting the token contexts last instead let a
    1-byte token's busy context outweigh every longer byte context: without hierarchy, wiki
    held-out 3.75 -> 2.14 bits/byte with byte contexts (2..6). A port marker spans no bytes: the
    byte contexts reaching back through it are salted with it and also know what led to it. As
    the most specific context instead, the marker's (every associated stream's first tokens)
    outweighed the one that had seen this stream's: cross-modal recall from binary to text
    0.96 -> 1.0 (0.56 -> 0.98 once text patterns stopped spanning words)."""
    cdef uint64_t keys[MAX_ORDERS]
    cdef uint32_t n = trace_keys(g, t, keys)
    cdef uint32_t orders = trace_orders(g, t), nb, bi = 0, out = 0, span = 0, j
    cdef bint inf = False
    nb = n - orders
    for j in range(orders):
        if t.ids[j] == STOP:
            inf = True
        span += g.nodes[t.ids[j]].payload_len
        while bi < nb and (inf or g.byte_orders[bi] <= span):
            t.kinds[out] = _byte_kind(g.byte_orders[bi])
            cis[out] = ctx_find(g, keys[bi])
            out += 1
            bi += 1
        if j == 0 and g.nodes[t.ids[0]].cat:
            t.kinds[out] = KIND_CAT
            cis[out] = ctx_find(g, cat_key(g.nodes[t.ids[0]].cat))
            out += 1
        t.kinds[out] = KIND_TOKEN
        cis[out] = ctx_find(g, keys[nb + j])
        out += 1
    while bi < nb:
        t.kinds[out] = _byte_kind(g.byte_orders[bi])
        cis[out] = ctx_find(g, keys[bi])
        out += 1
        bi += 1
    return out


cdef int add_port(GraphC* g, uint8_t port) noexcept nogil:
    """Create the 256 single-byte nodes of a port (all at once, so every byte of a port has a node)."""
    cdef uint32_t b, v
    cdef uint8_t byte
    if g.port_root[port] != NONE:
        return 0
    if reserve_nodes(g, 256, 256) < 0 or reserve_trie(g, 257) < 0:
        return -1
    for b in range(256):
        byte = <uint8_t>b
        v = append_node(g, &byte, 1, port, 0, NONE, NONE)
        trie_insert_node(g, v)
    return 0


cdef int graph_init(GraphC* g) noexcept nogil:
    cdef uint32_t v
    if add_port(g, 0) < 0:
        return -1
    if reserve_nodes(g, 1, 0) < 0:
        return -1
    v = append_node(g, NULL, 0, 0, 0, NONE, NONE)      # STOP
    return 0


cdef void _rescale_ctx(GraphC* g, uint32_t ci) noexcept nogil:
    """Halve one context's counts (kept >= 1) when a counter would overflow: PPM's rescaling."""
    cdef uint32_t e = g.ctxs[ci].head
    cdef uint32_t total = 0
    while e != NONE:
        g.edges[e].count = <uint16_t>((g.edges[e].count + 1) >> 1)
        total += g.edges[e].count
        e = g.edges[e].next
    g.ctxs[ci].total = total


cdef int _count(GraphC* g, uint64_t key, uint32_t ci, uint32_t v, uint32_t ei,
                uint32_t* ci_out, uint32_t* ei_out) noexcept nogil:
    """Count v after the context `key` (already looked up as `ci`, NONE if absent; its edge to v
    `ei`, NONE if absent, EDGE_UNKNOWN if not looked up)."""
    if ci == NONE:
        # Reserve both before appending either: a failure leaves no empty context behind.
        if reserve_ctxs(g, 1) < 0 or reserve_edges(g, 1) < 0:
            return -1
        ci = append_ctx(g, key)
        ei = NONE
    elif ei == EDGE_UNKNOWN:
        ei = edge_find(g, ci, v)
    if ei == NONE:
        if reserve_edges(g, 1) < 0:
            return -1
        ei = append_edge(g, ci, v)
    if g.edges[ei].count == 0xFFFF or g.ctxs[ci].total >= 0x7FFFFFFF:
        _rescale_ctx(g, ci)
    g.edges[ei].count += 1
    g.edges[ei].stamp = <uint16_t>(g.tokens_fed >> 16)
    g.ctxs[ci].total += 1
    ci_out[0] = ci
    ei_out[0] = ei
    return 0


cdef uint32_t _find_concat(GraphC* g, uint64_t key, uint32_t a, uint32_t b) noexcept nogil:
    cdef uint64_t cap = g.node_ix.capacity
    cdef uint64_t i = fastrange(key, cap)
    cdef uint32_t s, mask = g.node_ix.mask
    cdef NodeC* n
    cdef NodeC* na = &g.nodes[a]
    cdef NodeC* nb = &g.nodes[b]
    while True:
        s = g.node_ix.slots[i]
        if s == 0:
            return NONE
        if ix_tag_matches(s, key, mask):
            n = &g.nodes[ix_value(s, mask)]
            if n.key == key and n.port == na.port and \
                    n.payload_len == na.payload_len + nb.payload_len and \
                    memcmp(g.arena + n.payload_off, g.arena + na.payload_off, na.payload_len) == 0 and \
                    memcmp(g.arena + n.payload_off + na.payload_len, g.arena + nb.payload_off,
                           nb.payload_len) == 0:
                return ix_value(s, mask)
        i += 1
        if i == cap:
            i = 0


cdef inline uint8_t _word_class(uint8_t c) noexcept nogil:
    """0 space, 1 letter (and every byte >= 0x80, so UTF-8 words stay whole), 2 digit, 3 other."""
    if c == 32:
        return 0
    if c >= 128 or <uint8_t>((c | 32) - 97) < 26:
        return 1
    if <uint8_t>(c - 48) < 10:
        return 2
    return 3


cdef inline bint _splits_words(GraphC* g, uint32_t a, uint32_t b) noexcept nogil:
    """Whether a+b would span a word boundary. On the text port a pattern is at most one word: an
    optional leading space, then a run of letters or of other symbols, or a single digit (GPT-2's
    pre-tokenisation, with digits split as LLaMA's tokenizer splits them, applied to online BPE).
    Free formation fused the most frequent pairs wherever they fell ("e the", "s of t"), so
    contexts and predictions started mid-word and the leftover fragments were rare tokens: wiki
    held-out 2.2557 -> 2.1225 bits/byte with runs of digits, 2.1142 with single digits (numbers
    are spelled, not a vocabulary of rare "1987"s; without the leading space 2.1131, but a lone
    space before every number then makes " " a common token and prompts ending in a space
    predict digits), next-word recall 0.935 -> 0.94, big.txt (16 MB, 1 MB held-out) 1.9871 ->
    1.9114, training as fast (fewer, shorter patterns, more tokens per byte). Checked at the
    junction only: a and b already keep the rule (or came from a brain trained without it)."""
    cdef NodeC* na = &g.nodes[a]
    cdef uint8_t last = g.arena[na.payload_off + na.payload_len - 1]
    cdef uint8_t first = _word_class(g.nodes[b].first)
    if first == 0:
        return True
    if na.payload_len == 1 and last == 32:
        return False                      # the leading space of a word (or of a number)
    return first == 2 or _word_class(last) != first


cdef void _maybe_form(GraphC* g, uint32_t a, uint32_t b, uint32_t ci, uint32_t ei) noexcept nogil:
    """Online BPE: fuse a+b when a->b is strong relative to a's other successors."""
    cdef uint32_t c, la, lb, length, v
    cdef uint8_t level, port
    cdef uint64_t poly, key
    if a == STOP or b == STOP or g.nodes[a].payload_len == 0 or g.nodes[b].payload_len == 0:
        return                            # STOP and port markers never fuse
    c = g.edges[ei].count
    if c < g.form_min_count or <uint64_t>c * g.ctxs[ci].distinct < g.ctxs[ci].total:
        return
    if g.nodes[a].port != g.nodes[b].port:
        return
    if g.word_tokens and g.nodes[a].port == 0 and _splits_words(g, a, b):
        return
    la = g.nodes[a].payload_len
    lb = g.nodes[b].payload_len
    length = la + lb
    level = (g.nodes[a].level if g.nodes[a].level > g.nodes[b].level else g.nodes[b].level) + 1
    if length > g.max_payload or level > g.max_levels or g.n_nodes >= g.max_nodes:
        return
    port = g.nodes[a].port
    poly = g.nodes[a].poly * poly_pow(lb) + g.nodes[b].poly
    key = node_key(poly, port, length)
    if _find_concat(g, key, a, b) != NONE:
        return
    if reserve_nodes(g, 1, length) < 0 or reserve_trie(g, length + 1) < 0:
        g.pool.err = ERR_NONE          # formation is optional: under a cap, keep the shorter tokens
        return
    # The arena may have moved in reserve: read the offsets only now.
    memcpy(g.arena + g.n_arena, g.arena + g.nodes[a].payload_off, la)
    memcpy(g.arena + g.n_arena + la, g.arena + g.nodes[b].payload_off, lb)
    v = append_node(g, g.arena + g.n_arena, length, port, level, a, b)
    trie_insert_node(g, v)
    g.formed += 1


# A node is (re)placed in a category each time its context's total doubles, up to CAT_LAST,
# and its continuations are counted in its category while its context has seen fewer than
# CAT_COUNT_MAX: a category then holds how its members continue while still rare, what a rare
# member lacks (big.txt 16 MB: 1.9256 bits/byte with both at 128, 1.9246 at 16, and training
# ~8% faster: walking and counting less).
cdef uint32_t CAT_LAST = 16
cdef uint32_t CAT_COUNT_MAX = 16
def _set_cat_limits(uint32_t last, uint32_t count_max):
    """Tuning hook: CAT_LAST and CAT_COUNT_MAX."""
    global CAT_LAST, CAT_COUNT_MAX
    CAT_LAST, CAT_COUNT_MAX = last, count_max


cdef inline void _maybe_categorize(GraphC* g, uint32_t u, uint32_t ci) noexcept nogil:
    cdef uint32_t t = g.ctxs[ci].total
    if t >= 2 and t <= CAT_LAST and (t & (t - 1)) == 0 and u != STOP and \
            g.nodes[u].payload_len > 0:
        categorize(g, u, ci)


cdef int _auto_prune(GraphC* g, TraceC* tr) noexcept nogil:
    cdef int err = g.pool.err
    cdef size_t target_bytes = g.pool.cap
    cdef uint64_t target_edges = g.max_edges
    if err == ERR_CAP:
        target_bytes = <size_t>(g.pool.cap * PRUNE_SHARE)
    elif err == ERR_LIMIT:
        target_edges = <uint64_t>(g.max_edges * PRUNE_SHARE)
    else:
        return -1
    prune_to(g, target_bytes, target_edges, tr)
    g.pool.err = err
    return 0


cdef void _lookup_all(GraphC* g, uint64_t* keys, uint32_t n, uint32_t v, bint primed,
                      uint32_t* found) noexcept nogil:
    """Find every order's context, overlapping the cache misses: all index slots are prefetched
    first, then the context records, then the edge slots the update will probe (unless primed:
    _prime_edges fetched the edges already)."""
    cdef uint32_t k
    if g.ctx_ix.capacity == 0:
        for k in range(n):
            found[k] = NONE
        return
    for k in range(n):
        prefetch(&g.ctx_ix.slots[fastrange(keys[k], g.ctx_ix.capacity)])
    for k in range(n):
        found[k] = ctx_find(g, keys[k])
    if g.edge_ix.capacity and not primed:
        for k in range(n):
            if found[k] != NONE:
                _prefetch_edge_probe(g, found[k], v)


cdef inline void _prefetch_edge_probe(GraphC* g, uint32_t c, uint32_t v) noexcept nogil:
    """Start edge_find(c, v)'s first miss: the index slot, or the list head for a context's sole
    edge, which is not indexed. c's record must be at hand."""
    if g.ctxs[c].distinct < 2:
        if g.ctxs[c].head != NONE:
            prefetch(&g.edges[g.ctxs[c].head])
    else:
        prefetch(&g.edge_ix.slots[fastrange(edge_hash(c, v), g.edge_ix.capacity)])


cdef void _prime_edges(GraphC* g, uint64_t* keys, uint32_t n, uint32_t v) noexcept nogil:
    """Prefetch the edges to v of the contexts `keys` likely name, from their index slots, records
    and edge slots (fetched earlier, see _look_ahead), before the contexts are confirmed."""
    cdef uint32_t k, c, e
    if g.ctx_ix.capacity == 0 or g.edge_ix.capacity == 0:
        return
    for k in range(n):
        c = ix_candidate(&g.ctx_ix, keys[k])
        if c == NONE:
            continue
        if g.ctxs[c].distinct < 2:        # a sole edge is not indexed (see edge_find)
            e = g.ctxs[c].head
        else:
            e = ix_candidate(&g.edge_ix, edge_hash(c, v))
        if e != NONE:
            prefetch(&g.edges[e])


cdef uint32_t _look_ahead(GraphC* g, TraceC* tr, uint32_t v, uint32_t hint) noexcept nogil:
    """As the step learning v begins, start the misses of the next two. The next step's context
    keys follow from the history and v: into tr.next_keys (returns how many, for tr.n_next once v
    is pushed); _spec_ahead computes the step after's from hint, a guess of the next token (NONE
    if unknown). Index slots are fetched two steps ahead, then the records and edge slots they
    name one step ahead: a step's lookups, made after its own token is known, then mostly hit
    the cache."""
    cdef uint32_t n1 = tr.n_spec, k, c
    cdef bint spec = n1 != 0 and tr.spec_for == v
    tr.n_spec = 0
    tr.primed_for = NONE
    if v == STOP or g.ctx_ix.capacity == 0:
        return 0
    if spec:
        memcpy(tr.next_keys, tr.spec_keys, n1 * sizeof(uint64_t))
    else:
        n1 = _keys_after(g, tr, v, NONE, tr.next_keys)
        for k in range(n1):
            prefetch(&g.ctx_ix.slots[fastrange(tr.next_keys[k], g.ctx_ix.capacity)])
    if hint == NONE:
        return n1
    if hint != STOP:
        prefetch(&g.nodes[hint])          # for _spec_ahead
    if spec:                              # the next step's slots were fetched a step ago
        for k in range(n1):
            c = ix_candidate(&g.ctx_ix, tr.next_keys[k])
            if c != NONE:
                prefetch(&g.ctxs[c])
                if g.edge_ix.capacity:
                    prefetch(&g.edge_ix.slots[fastrange(edge_hash(c, hint), g.edge_ix.capacity)])
        tr.primed_for = hint
    return n1


cdef inline void _spec_ahead(GraphC* g, TraceC* tr, uint32_t v, uint32_t hint) noexcept nogil:
    """The context keys of the step after next if the next token is hint, their index slots
    fetched (see _look_ahead). Made once the step's own lookups are done: hint's record was
    fetched as the step began."""
    if v == STOP or hint == NONE or hint == STOP or g.ctx_ix.capacity == 0:
        return
    _guess_keys(g, tr, v, hint, hint)


cdef inline void _guess_keys(GraphC* g, TraceC* tr, uint32_t a, uint32_t b,
                             uint32_t guess) noexcept nogil:
    """tr.spec_keys: the keys once a, then b (unless NONE), are pushed, valid if the next
    token learned is `guess`; their index slots fetched."""
    cdef uint32_t k
    tr.n_spec = _keys_after(g, tr, a, b, tr.spec_keys)
    tr.spec_for = guess
    for k in range(tr.n_spec):
        prefetch(&g.ctx_ix.slots[fastrange(tr.spec_keys[k], g.ctx_ix.capacity)])


cdef bint UPDATE_EXCLUSION = True
# _plan did not look the edge up (edge ids stay below max_edges <= 0xFFFFFFF0)
cdef uint32_t EDGE_UNKNOWN = 0xFFFFFFFEu


def _set_update_exclusion(bint on):
    """Experiment hook (tools/eval.py)."""
    global UPDATE_EXCLUSION
    UPDATE_EXCLUSION = on


cdef uint32_t _plan(GraphC* g, uint32_t* found, uint32_t* edges, uint32_t lo, uint32_t hi,
                    uint32_t keep, bint gated, uint32_t v, uint32_t* plan,
                    uint32_t n_plan) noexcept nogil:
    """Which contexts of one chain (lo..hi-1, each more specific than the last) learn v.
    In a gated chain (token contexts) a longer context is created only once the next shorter one
    had been seen: most long token contexts occur once. Byte contexts are not gated: a sentence
    seen once is then remembered by its long byte contexts (next-word recall on wiki with
    (4, 8, 16, 32): 0.53 gated -> 0.83), at equal bits per byte; pruning bounds their memory.
    With update exclusion (PPM)
    the walk goes from the most specific down and stops after the first context that had already
    seen v, so shorter contexts count novel continuations (as Kneser-Ney's lower orders do) and
    repeated text costs fewer probes. `keep` (the order-1 token context, which drives hierarchy
    formation) is always counted. edges[k] gets the edge to v of each planned context that
    exists (NONE if it has none; EDGE_UNKNOWN if not looked up), for _count."""
    cdef uint32_t k = hi
    cdef bint stopped = False
    while k > lo:
        k -= 1
        if gated and k > lo and found[k] == NONE and found[k - 1] == NONE:
            continue
        if stopped and k != keep:
            continue
        plan[n_plan] = k
        n_plan += 1
        edges[k] = EDGE_UNKNOWN
        if UPDATE_EXCLUSION and found[k] != NONE:
            edges[k] = edge_find(g, found[k], v)
            if edges[k] != NONE:
                stopped = True
    return n_plan


cdef int _learn(GraphC* g, TraceC* tr, uint32_t v, uint32_t hint) noexcept nogil:
    """Learn token v after the trace's history; hint is a guess of the token after v (NONE if
    unknown), used only to prefetch."""
    cdef uint64_t keys[MAX_ORDERS]
    cdef uint32_t found[MAX_ORDERS]
    cdef uint32_t plan[MAX_ORDERS]
    cdef uint32_t edges[MAX_ORDERS]
    cdef uint32_t n, k, i, j, ci, ei, first_token, n_plan, n_next
    cdef bint pruned = False, has_cat, primed = tr.primed_for == v
    cdef uint64_t formed = g.formed, prunes = g.prunes
    tr.pending = v
    prefetch(&g.nodes[v])                 # read late (formation), after the lookups' misses
    if tr.n_next:                         # computed (and prefetched) in the last step
        n = tr.n_next
        memcpy(keys, tr.next_keys, n * sizeof(uint64_t))
    else:
        n = trace_keys(g, tr, keys)
    first_token = n - trace_orders(g, tr)
    n_next = _look_ahead(g, tr, v, hint)
    _lookup_all(g, keys, n, v, primed, found)
    # A category counts its members' continuations while they are rarely seen (CAT_COUNT_MAX)
    has_cat = first_token < n and g.nodes[tr.ids[0]].cat != 0 and \
        (found[first_token] == NONE or g.ctxs[found[first_token]].total < CAT_COUNT_MAX)
    if has_cat:
        keys[n] = cat_key(g.nodes[tr.ids[0]].cat)
        found[n] = ctx_find(g, keys[n])
    n_plan = _plan(g, found, edges, 0, first_token, NONE, False, v, plan, 0)
    n_plan = _plan(g, found, edges, first_token, n, first_token, True, v, plan, n_plan)
    _spec_ahead(g, tr, v, hint)
    if tr.primed_for != NONE:             # the next step's edges, half a step after their slots
        _prime_edges(g, tr.next_keys, n_next, tr.primed_for)
    if has_cat:                           # its own chain: always counted (the members' sum)
        plan[n_plan] = n
        edges[n] = EDGE_UNKNOWN
        n_plan += 1
        n += 1
    i = 0
    while i < n_plan:
        k = plan[i]
        if _count(g, keys[k], found[k], tr.pending, edges[k], &ci, &ei) < 0:
            if pruned or _auto_prune(g, tr) < 0:
                return -1
            pruned = True
            _lookup_all(g, keys, n, tr.pending, False, found)   # dense positions moved
            for j in range(n):
                edges[j] = EDGE_UNKNOWN
            continue                      # keys are stable across pruning; ids were remapped
        found[k] = ci
        if k == first_token:
            _maybe_form(g, tr.ids[0], tr.pending, ci, ei)
            if g.max_cats:
                _maybe_categorize(g, tr.ids[0], ci)
        i += 1
    v = tr.pending
    # Age all counts before any counter or trie aggregate could wrap.
    if g.nodes[v].count >= 0xFFFFFFF0u or g.total_count + g.n_nodes >= 0xFFFFFF00u:
        for k in range(g.n_nodes):
            g.nodes[k].count >>= 1
        g.total_count = 0
        for k in range(g.n_nodes):
            g.total_count += g.nodes[k].count
        rebuild_indexes(g)                # recomputes the trie aggregates
    g.nodes[v].count += 1
    g.total_count += 1
    g.tokens_fed += 1
    if v != STOP:
        trie_add_count(g, v, 1)
    tr.pending = NONE
    _trace_shift(tr, v, MAX_CONTEXT)
    tr.n_next = n_next                    # _look_ahead's keys (node ids may have been remapped)
    if g.formed != formed or g.prunes != prunes:          # the guess of the next token is stale
        _trace_forget_guess(tr)
    return 0


cdef int _learn_stream(GraphC* g, TraceC* tr, const uint8_t* data, size_t n, uint8_t port,
                       uint32_t after) noexcept nogil:
    """Learn data's tokens; `after` is the token learned next (NONE if not known). Each token is
    matched before the last is learned, as _learn's guess of what follows; formation or pruning
    during that step can change the match, which is then made again."""
    cdef size_t pos = 0
    cdef uint32_t v, length, nv = NONE, nlength = 0
    cdef uint64_t formed, prunes
    if n == 0:
        return 0
    v = match_longest(g, port, data, n, &length)
    while True:
        formed, prunes = g.formed, g.prunes
        if pos + length < n:
            nv = match_longest(g, port, data + pos + length, n - pos - length, &nlength)
        if _learn(g, tr, v, nv if pos + length < n else after) < 0:
            return -1
        pos += length
        g.bytes_fed += length
        if pos >= n:
            return 0
        if g.formed != formed or g.prunes != prunes:
            nv = match_longest(g, port, data + pos, n - pos, &nlength)
        v, length = nv, nlength


cdef void _episode_prepare(GraphC* g, TraceC* tr, const uint8_t* data, size_t n,
                           uint8_t port) noexcept nogil:
    """Reset tr for the episode `data` and start the misses of its first two steps, as learning
    starts them for the steps of an episode under way (_look_ahead, _spec_ahead), so that batched
    episodes do not each begin cold (16 MB of big.txt: the first two steps 645 and 1021 cycles
    against 542 and 855 prepared, where a step in full flow takes ~1300; ~1% of training). The
    first step's contexts (the episode start's, busy) get their edge slots to the first token
    fetched, the second step's keys are computed as a guess (tr.spec_*, used only if the first
    token is matched again) and their index slots fetched."""
    cdef uint64_t keys[MAX_ORDERS]
    cdef uint32_t n_keys, k, c, v0, length
    trace_reset(tr)
    if n == 0 or g.port_root[port] == NONE or g.ctx_ix.capacity == 0:
        return
    v0 = match_longest(g, port, data, n, &length)
    if g.edge_ix.capacity:
        n_keys = trace_keys(g, tr, keys)
        for k in range(n_keys):
            c = ix_candidate(&g.ctx_ix, keys[k])
            if c != NONE:
                _prefetch_edge_probe(g, c, v0)
    _guess_keys(g, tr, v0, NONE, v0)


cdef int feed_traced(GraphC* g, TraceC* tr, const uint8_t* data, size_t n, uint8_t port,
                     const uint8_t* next_data, size_t next_n, TraceC* next_tr) noexcept nogil:
    """Learn one episode (it ends with a learned STOP) with tr reset, or prepared by the call
    before; with next_tr, that is prepared for the episode next_data (on the same port) while
    this one's last step runs."""
    cdef uint64_t formed, prunes
    if g.port_root[port] == NONE and add_port(g, port) < 0:
        return -1
    if _learn_stream(g, tr, data, n, port, STOP) < 0:
        return -1
    if next_tr != NULL:
        _episode_prepare(g, next_tr, next_data, next_n, port)
    formed, prunes = g.formed, g.prunes
    if _learn(g, tr, STOP, NONE) < 0:
        return -1
    if next_tr != NULL and (g.formed != formed or g.prunes != prunes):
        _trace_forget_guess(next_tr)
    g.episodes += 1
    return 0


cdef int ensure_marker(GraphC* g, uint8_t port) noexcept nogil:
    if g.port_marker[port] != NONE:
        return 0
    if reserve_nodes(g, 1, 0) < 0:
        return -1
    append_marker(g, port)
    return 0


cdef int feed_bridge(GraphC* g, const uint8_t* a, size_t na, uint8_t pa,
                     const uint8_t* b, size_t nb, uint8_t pb) noexcept nogil:
    """One cross-modal episode: stream a on port pa, pb's marker, stream b on port pb, STOP. The
    marker's successors learn what each a leads to on pb (byte contexts reach back through it)."""
    cdef TraceC tr
    if (g.port_root[pa] == NONE and add_port(g, pa) < 0) or \
            (g.port_root[pb] == NONE and add_port(g, pb) < 0) or ensure_marker(g, pb) < 0:
        return -1
    trace_reset(&tr)
    if _learn_stream(g, &tr, a, na, pa, g.port_marker[pb]) < 0 or \
            _learn(g, &tr, g.port_marker[pb], NONE) < 0 or \
            _learn_stream(g, &tr, b, nb, pb, STOP) < 0 or _learn(g, &tr, STOP, NONE) < 0:
        return -1
    g.episodes += 1
    return 0


# Discounted interpolation (Pitman-Yor / Kneser-Ney style, without continuation counts):
#   p_k(v) = (max(c - d, 0) + (a + d * D) * p_{k-1}(v)) / (T + a)
# over tokens for generation (prob_of): d = 0.9, a = 8 beat Witten-Bell by 0.15 bits/byte once
# byte-suffix contexts were added. A context only ever followed by one token is trusted more
# (PPM's deterministic contexts): a = 0.3 there lifted next-word recall 0.16 -> 0.59.
# Generation also discounts deterministic contexts less (d = 0.3): recall 0.52 -> 0.67.
SMOOTH_RECALL.discount = 0.9
SMOOTH_RECALL.strength = 8.0
SMOOTH_RECALL.det_discount = 0.3
SMOOTH_RECALL.det_strength = 0.3
# Scoring and predict spell tokens (prob_spelled: c, T and D count next units at a trie step, and
# "deterministic" means one next unit there), with parameters by the kind of context, as PPMd's
# secondary escape estimation keys on the order: the long byte context remembers (a sentence seen
# once), so its own counts are trusted far more than a short one's. Tuned by coordinate descent on
# wiki_train split 88/12, then measured once: wiki held-out 2.1142 -> 2.1021 bits/byte against one
# shared (0.6, 24, 0.5, 3) (which retuned on the same split gives 2.1092); big.txt (16 MB trained,
# 1 MB of heldout.txt) 1.9043 -> 1.8987. The shared values were chosen on wiki held-out when
# patterns spanned words: (0.9, 8, 0.9, 0.3) 2.3407, (0.6, 24, 0.5, 3) 2.3046.
#                 discount strength  det_discount det_strength
_SCORE_KINDS = ((0.3,     54.0,     0.4,         4.5),     # KIND_SHORT: 2 bytes
                (0.4,     24.0,     0.0,         3.0),     # KIND_MID: 4 bytes
                (0.6,     4.75,     0.0,         2.0),     # KIND_LONG: 24 bytes
                (0.0,     36.0,     0.0,         4.5),     # KIND_TOKEN
                (0.0,     1000.0,   0.0,         200.0))   # KIND_CAT
for _k in range(N_KINDS):
    (SMOOTH_SCORE[_k].discount, SMOOTH_SCORE[_k].strength, SMOOTH_SCORE[_k].det_discount,
     SMOOTH_SCORE[_k].det_strength) = _SCORE_KINDS[_k]
    # Without hierarchy every token is one byte and the contexts are many and short-lived: a
    # weaker prior on each context's own counts fits better (wiki held-out, byte contexts 2..24:
    # a = 8 2.1087, a = 2 2.0955, d = 0.85 and det a = 0.2 2.0926 bits/byte); one set for all.
    SMOOTH_BYTES[_k].discount = 0.85
    SMOOTH_BYTES[_k].strength = 2.0
    SMOOTH_BYTES[_k].det_discount = 0.85
    SMOOTH_BYTES[_k].det_strength = 0.2

_KIND_NAMES = ("short", "mid", "long", "token", "cat")


cdef SmoothC* _smoothing_named(str which) except NULL:
    """"recall", or "score"/"bytes" with a kind ("score-long"); without one, the first kind's."""
    name, _, kind = which.partition("-")
    if name == "recall" and not kind:
        return &SMOOTH_RECALL
    if name not in ("score", "bytes") or (kind and kind not in _KIND_NAMES):
        raise ValueError(f"unknown smoothing {which!r}")
    cdef int k = _KIND_NAMES.index(kind) if kind else 0
    if name == "score":
        return &SMOOTH_SCORE[k]
    return &SMOOTH_BYTES[k]


def _set_smoothing(str which, double discount, double strength, double det_discount,
                   double det_strength):
    """Tuning hook for experiments: which = "recall", or "score" (scoring with hierarchy) or
    "bytes" (without), with a kind ("score-short", "-mid", "-long", "-token") or for every kind."""
    cdef SmoothC* sm = _smoothing_named(which)
    cdef int k, n = 1
    if not (0.0 <= discount < 1.0 and 0.0 <= det_discount < 1.0 and strength > 0.0
            and det_strength > 0.0):
        raise ValueError("need 0 <= discounts < 1 and strengths > 0")
    if which in ("score", "bytes"):
        n = N_KINDS
    for k in range(n):
        sm[k].discount = discount
        sm[k].strength = strength
        sm[k].det_discount = det_discount
        sm[k].det_strength = det_strength


cdef SmoothC* score_smoothing(GraphC* g) noexcept nogil:
    if g.form_min_count == 0xFFFFFFFFu:
        return &SMOOTH_BYTES[0]
    return &SMOOTH_SCORE[0]


def _get_smoothing(str which):
    return _smoothing_named(which)[0]


cdef inline void _params(SmoothC* sm, uint64_t distinct, double* dd, double* aa) noexcept nogil:
    """The discount and strength for a context (or spelling step) with this many distinct
    successors: a deterministic one (a single successor) has its own."""
    if distinct == 1:
        dd[0] = sm.det_discount
        aa[0] = sm.det_strength
    else:
        dd[0] = sm.discount
        aa[0] = sm.strength


cdef double prob_of(GraphC* g, uint32_t* cis, uint32_t n, uint32_t v, SmoothC* sm) noexcept nogil:
    """Interpolated back-off: order 0 with a +1 floor for every node, then each longer context
    mixes in its own counts. Sums to 1 over all nodes."""
    cdef double p = (g.nodes[v].count + 1.0) / (<double>g.total_count + g.n_nodes)
    cdef uint32_t k, ci, ei, c
    cdef double cd, a, dd
    cdef CtxC* x
    for k in range(n):
        ci = cis[k]
        if ci == NONE:
            continue
        x = &g.ctxs[ci]
        if x.total == 0:
            continue
        ei = edge_find(g, ci, v)
        c = g.edges[ei].count if ei != NONE else 0
        _params(sm, x.distinct, &dd, &a)
        cd = c - dd if c > dd else 0.0
        p = (cd + (a + dd * x.distinct) * p) / (<double>x.total + a)
    return p



cdef bint is_excluded(GraphC* g, uint32_t a, uint32_t u) noexcept nogil:
    """True if greedy segmentation can never emit u right after a: some prefix of u would have
    extended a into a longer pattern (so a would not have been the longest match)."""
    cdef uint32_t s, j
    cdef NodeC* nu
    if a == STOP or u == STOP or g.nodes[a].port != g.nodes[u].port:
        return False
    s = g.nodes[a].state
    if s == NONE or g.trie[s].first_child == NONE:
        return False
    nu = &g.nodes[u]
    for j in range(nu.payload_len):
        s = trie_step(g, s, g.arena[nu.payload_off + j])
        if s == NONE:
            return False
        if g.trie[s].node != NONE:
            return True
    return False


cdef inline uint64_t _version(GraphC* g) noexcept nogil:
    # Changes whenever counts or ids can have changed (learning, pruning).
    return g.tokens_fed ^ (g.prunes << 40) ^ (g.n_nodes << 20)


# --- sorted successors of busy contexts -------------------------------------------------------------
# A context with thousands of successors (a short byte suffix, a frequent token) would be walked
# at every spelling step of every token scored after it. Sorted by (port, payload), the successors
# that start with a given prefix are one range, summed from prefix sums, and the distinct next
# units are blocks found by binary search.
cdef uint32_t EXCL_MIN = 64         # successors for a context to get a sorted copy
cdef enum:
    # Contexts below EXCL_BUSY successors get at most an eighth of the slots (a quarter of those
    # that may fill) and a quarter of the ids: admitted first come, first served, they had filled
    # every slot before the busiest contexts came (scoring fell to 3 KB/s). Scoring 512 KB of
    # heldout.txt, interleaved with sorting from 256 successors in 8192 slots: brains of word
    # patterns trained on 88 and 16 MB 90 -> 113 and 139 -> 193 KB/s, free patterns 181 -> 232;
    # identical bits.
    EXCL_BUSY = 256
    EXCL_SLOTS = 32768              # contexts held at most (power of two, half filled at most)
    EXCL_MAX_IDS = 16 << 20         # successor ids held at most (64 MiB each of ids, keys, sums)
    EXCL_PATIENCE = 64              # busy-context walks on an unchanged graph before sorting

def _set_excl_min(uint32_t n):
    """Test hook: contexts with at least n successors use sorted ranges (huge n: always walk).
    Returns the previous value."""
    global EXCL_MIN
    old = EXCL_MIN
    EXCL_MIN = n
    return old


cdef struct SortRecC:
    uint64_t key                   # port, then the payload's first 7 bytes (zero-padded), big-endian
    uint64_t word                  # count << 32 | node id
    uint32_t tail                  # _tail_key


cdef inline uint32_t _tail_key(GraphC* g, uint32_t v) noexcept nogil:
    """The payload's bytes 1..4, zero-padded, big-endian: byte i (1 <= i <= 4) is
    key >> (32 - 8 * i) & 0xFF, and 0 where the payload has ended, which orders within a block
    the way _unit_end's comparisons need. (Bytes 1..8 in 64 bits scored slower: 77 against
    86-91 KB/s, the keys twice the cache lines.)"""
    cdef NodeC* nd = &g.nodes[v]
    cdef uint32_t key = 0
    cdef uint32_t j, m = nd.payload_len if nd.payload_len < 5 else 5
    cdef const uint8_t* p = g.arena + nd.payload_off
    for j in range(1, m):
        key |= <uint32_t>p[j] << (32 - 8 * j)
    return key


cdef inline uint64_t _sort_key(GraphC* g, uint32_t v) noexcept nogil:
    """Orders tokens as _cmp_payload does wherever two keys differ (a payload that ends where
    another has a byte pads with 0, which sorts first, as the shorter payload does)."""
    cdef NodeC* nd = &g.nodes[v]
    cdef uint64_t key = <uint64_t>nd.port << 56
    cdef uint32_t j, m = nd.payload_len if nd.payload_len < 7 else 7
    cdef const uint8_t* p = g.arena + nd.payload_off
    for j in range(m):
        key |= <uint64_t>p[j] << (48 - 8 * j)
    return key


cdef int _cmp_payload(const void* pa, const void* pb, void* graph) noexcept nogil:
    """qsort_r order of SortRecC: by the node's port, then payload. The keys decide most
    comparisons without reading the nodes (sorting a busy context's 10^5 successors by their
    payloads alone was 0.25 s of a big brain's first query)."""
    cdef SortRecC* ra = <SortRecC*>pa
    cdef SortRecC* rb = <SortRecC*>pb
    cdef GraphC* g = <GraphC*>graph
    cdef NodeC* x
    cdef NodeC* y
    cdef uint32_t m
    cdef int c
    if ra.key != rb.key:
        return -1 if ra.key < rb.key else 1
    x = &g.nodes[<uint32_t>ra.word]
    y = &g.nodes[<uint32_t>rb.word]
    if x.port != y.port:
        return -1 if x.port < y.port else 1
    m = x.payload_len if x.payload_len < y.payload_len else y.payload_len
    c = memcmp(g.arena + x.payload_off, g.arena + y.payload_off, m)
    if c != 0:
        return c
    if x.payload_len != y.payload_len:
        return -1 if x.payload_len < y.payload_len else 1
    return 0


cdef inline int _cmp_prefix(GraphC* g, uint32_t v, uint8_t port, const uint8_t* c,
                            uint32_t len_c) noexcept nogil:
    """Order of token v against the tokens that start with c on port: <0 before, 0 among, >0 after."""
    cdef NodeC* x = &g.nodes[v]
    cdef uint32_t m = x.payload_len if x.payload_len < len_c else len_c
    cdef int r
    if x.port != port:
        return -1 if x.port < port else 1
    if m and x.first != c[0]:             # most comparisons end at the first byte: no arena read
        return -1 if x.first < c[0] else 1
    r = memcmp(g.arena + x.payload_off, c, m)
    if r != 0:
        return r
    return -1 if x.payload_len < len_c else 0


cdef void _excl_reset(ExclC* x, uint64_t version, uint32_t walks) noexcept nogil:
    """Drop every sorted copy: they belong to another version of the graph."""
    if x.slots != NULL:
        memset(x.slots, 0, EXCL_SLOTS * sizeof(ExclSlotC))
    x.n_ctx = x.n_small = 0
    x.used_ids = x.used_pre = x.small_ids = 0
    x.version = version
    x.walks = walks


cdef void excl_settled(GraphC* g) noexcept nogil:
    """The graph was just loaded, not learned: sort busy contexts from the first query on instead
    of after EXCL_PATIENCE walks (which cost a 1.3 GB brain's first predict 0.3 s)."""
    _excl_reset(&g.excl, _version(g) + 1, EXCL_PATIENCE)


cdef ExclSlotC* _excl_get(GraphC* g, uint32_t ci) noexcept nogil:
    """The sorted successors of a busy context, built on first use; NULL when the scratch is full
    or cannot be allocated, or the graph changed only recently (the caller walks the list)."""
    cdef ExclC* x = &g.excl
    cdef uint64_t h, version = _version(g) + 1
    cdef uint32_t n = g.ctxs[ci].distinct, i, e, total
    cdef ExclSlotC* slot
    cdef void* p
    cdef SortRecC* recs
    cdef NodeC* nd
    cdef NodeC* prev = NULL
    if x.version != version:                     # the graph changed
        _excl_reset(x, version, 0)
    # Sorting costs a few walks: only once the graph has stayed unchanged for a while (a frozen
    # brain being queried, not queries interleaved with learning).
    if x.walks < EXCL_PATIENCE:
        x.walks += 1
        return NULL
    if x.slots == NULL:
        x.slots = <ExclSlotC*>malloc(EXCL_SLOTS * sizeof(ExclSlotC))
        if x.slots == NULL:
            return NULL
        memset(x.slots, 0, EXCL_SLOTS * sizeof(ExclSlotC))
    h = fmix64(ci) & (EXCL_SLOTS - 1)
    while x.slots[h].ctx1 != 0:
        if x.slots[h].ctx1 == ci + 1:
            return &x.slots[h]
        h = (h + 1) & (EXCL_SLOTS - 1)
    if x.n_ctx >= EXCL_SLOTS // 2 or x.used_ids + n > EXCL_MAX_IDS:
        return NULL
    if n < EXCL_BUSY and (x.n_small >= EXCL_SLOTS // 8 or x.small_ids + n > EXCL_MAX_IDS // 4):
        return NULL                               # the rest is kept for the busiest contexts
    if x.used_ids + n > x.cap_ids:
        p = realloc(x.ids, (x.used_ids + n + x.cap_ids) * sizeof(uint32_t))
        if p == NULL:
            return NULL
        x.ids = <uint32_t*>p
        p = realloc(x.keys, (x.used_ids + n + x.cap_ids) * sizeof(uint32_t))
        if p == NULL:
            return NULL
        x.keys = <uint32_t*>p
        x.cap_ids = x.used_ids + n + x.cap_ids
    if (x.n_ctx + 1) * 256 > x.cap_first:
        p = realloc(x.first, (x.cap_first * 2 if x.cap_first else 16 * 256) * sizeof(uint32_t))
        if p == NULL:
            return NULL
        x.first = <uint32_t*>p
        x.cap_first = x.cap_first * 2 if x.cap_first else 16 * 256
    if x.used_pre + n + 1 > x.cap_pre:
        p = realloc(x.pre, (x.used_pre + n + 1 + x.cap_pre) * sizeof(uint32_t))
        if p == NULL:
            return NULL
        x.pre = <uint32_t*>p
        x.cap_pre = x.used_pre + n + 1 + x.cap_pre
    recs = <SortRecC*>malloc(n * sizeof(SortRecC))
    if recs == NULL:
        return NULL
    i = 0
    e = g.ctxs[ci].head
    while e != NONE and i < n:
        recs[i].word = (<uint64_t>g.edges[e].count << 32) | g.edges[e].dst
        recs[i].key = _sort_key(g, g.edges[e].dst)
        recs[i].tail = _tail_key(g, g.edges[e].dst)
        i += 1
        e = g.edges[e].next
    if i != n or e != NONE:
        free(recs)
        return NULL                               # cannot happen in a consistent graph
    qsort_r(recs, n, sizeof(SortRecC), _cmp_payload, g)
    total = 0
    x.pre[x.used_pre] = 0
    for i in range(n):
        x.ids[x.used_ids + i] = <uint32_t>recs[i].word
        x.keys[x.used_ids + i] = recs[i].tail
        total += <uint32_t>(recs[i].word >> 32)
        x.pre[x.used_pre + i + 1] = total
    free(recs)
    slot = &x.slots[h]
    slot.ctx1 = ci + 1
    slot.n = n
    slot.off = x.used_ids
    slot.pre_off = x.used_pre
    # Spelling's first step: per first byte on port 0, and the distinct first units (contiguous
    # in sorted order).
    slot.first_off = x.n_ctx * 256
    memset(x.first + slot.first_off, 0, 256 * sizeof(uint32_t))
    slot.d0 = 0
    for i in range(n):
        nd = &g.nodes[x.ids[x.used_ids + i]]
        if nd.payload_len and nd.port == 0:
            x.first[slot.first_off + nd.first] += x.pre[x.used_pre + i + 1] - x.pre[x.used_pre + i]
        if i == 0 or nd.payload_len == 0 or prev.payload_len == 0 or nd.port != prev.port or \
                nd.first != prev.first:
            slot.d0 += 1
        prev = nd
    x.used_ids += n
    x.used_pre += n + 1
    x.n_ctx += 1
    if n < EXCL_BUSY:
        x.n_small += 1
        x.small_ids += n
    return slot


# --- generation's candidates ----------------------------------------------------------------------
# Greedy generation weighs every token observed after any of the current contexts. prob_of per
# candidate probed every context's edge index for each of them (thousands after a short byte
# context of a big brain: ~10 ms per generated token). Each order's step is affine in the previous
# order's probability, p_k = beta_k(v) + alpha_k * p_(k-1) with alpha_k the same for every token
# and beta_k(v) non-zero only for the context's successors, so
#     p(v) = p_0(v) * prod_k alpha_k + sum_k beta_k(v) * prod_(j>k) alpha_j,
# and one walk of each context's successor list gives every candidate's probability.

cdef int _recall_grow(double** vals, uint32_t** ids, uint8_t** marks, uint32_t* cap,
                      uint32_t need) noexcept nogil:
    """Grow one of RecallC's triples of arrays (values, ids, marks) to cover indices below need,
    the new marks zeroed; -1 without memory (what was there stays valid)."""
    cdef uint64_t n = <uint64_t>need + need // 8 + 64
    cdef void* q
    if need <= cap[0]:
        return 0
    q = realloc(vals[0], n * sizeof(double))
    if q == NULL:
        return -1
    vals[0] = <double*>q
    q = realloc(ids[0], n * sizeof(uint32_t))
    if q == NULL:
        return -1
    ids[0] = <uint32_t*>q
    q = realloc(marks[0], n)
    if q == NULL:
        return -1
    marks[0] = <uint8_t*>q
    memset(marks[0] + cap[0], 0, n - cap[0])
    cap[0] = <uint32_t>n
    return 0


cdef int _recall_room(RecallC* rc, uint32_t nodes, uint32_t states) noexcept nogil:
    """Scratch for node ids below nodes and trie states below states; -1 without memory."""
    if _recall_grow(&rc.p, &rc.ids, &rc.mark, &rc.cap, nodes) < 0:
        return -1
    return _recall_grow(&rc.mass, &rc.states, &rc.state_mark, &rc.cap_states, states)


cdef inline void _recall_add(GraphC* g, RecallC* rc, uint32_t d, uint32_t c, uint8_t port,
                             double dd, double scale) noexcept nogil:
    """recall_gather: successor d seen c times in a context (scale: see there)."""
    if d == STOP or (g.nodes[d].port == port and g.nodes[d].payload_len > 0):
        if not rc.mark[d]:
            rc.mark[d] = 1
            rc.ids[rc.n] = d
            rc.n += 1
            rc.p[d] = 0.0
        if c > dd:
            rc.p[d] += (c - dd) * scale


cdef int recall_gather(GraphC* g, RecallC* rc, uint32_t* cis, uint32_t m,
                       uint8_t port) noexcept nogil:
    """The candidates after contexts cis[0..m) (NONE: left out): STOP and the tokens of `port`
    with a payload observed after any of them, into rc.ids[0..rc.n), each with
    prob_of(g, cis, m, v, &SMOOTH_RECALL) in rc.p[v] (the same sum, in another order). Returns
    rc.n, or -1 without memory (g.pool.err set)."""
    cdef double alpha[MAX_ORDERS]
    cdef double after[MAX_ORDERS + 1]
    cdef double dd, a, scale, base
    cdef uint32_t i, k, e, d
    cdef const uint32_t* ids
    cdef const uint32_t* pre
    cdef ExclSlotC* slot
    cdef CtxC* x
    for i in range(rc.n):
        rc.mark[rc.ids[i]] = 0
    rc.n = 0
    if _recall_room(rc, g.n_nodes, 0) < 0:
        g.pool.err = ERR_NOMEM
        g.pool.err_request = <size_t>g.n_nodes * (sizeof(double) + sizeof(uint32_t) + 1)
        return -1
    for k in range(m):
        alpha[k] = 1.0
        if cis[k] != NONE and g.ctxs[cis[k]].total:
            x = &g.ctxs[cis[k]]
            _params(&SMOOTH_RECALL, x.distinct, &dd, &a)
            alpha[k] = (a + dd * x.distinct) / (<double>x.total + a)
    after[m] = 1.0                        # after[k]: the product of the alphas from order k on
    for k in range(m - 1, -1, -1):
        after[k] = after[k + 1] * alpha[k]
    for k in range(m):
        if cis[k] == NONE:
            continue
        x = &g.ctxs[cis[k]]
        _params(&SMOOTH_RECALL, x.distinct, &dd, &a)
        scale = after[k + 1] / (<double>x.total + a) if x.total else 0.0
        # A busy context's sorted copy is read in order instead of chasing its list (one cache
        # miss per successor, tens of thousands after a short byte context of a big brain).
        slot = _excl_get(g, cis[k]) if x.distinct >= EXCL_MIN else NULL
        if slot != NULL:
            ids = g.excl.ids + slot.off
            pre = g.excl.pre + slot.pre_off
            for i in range(slot.n):
                if i + 8 < slot.n:
                    prefetch(&g.nodes[ids[i + 8]])
                _recall_add(g, rc, ids[i], pre[i + 1] - pre[i], port, dd, scale)
        else:
            e = x.head
            while e != NONE:
                _recall_add(g, rc, g.edges[e].dst, g.edges[e].count, port, dd, scale)
                e = g.edges[e].next
    base = after[0] / (<double>g.total_count + g.n_nodes)
    for i in range(rc.n):
        d = rc.ids[i]
        rc.p[d] += (g.nodes[d].count + 1.0) * base
    return <int>rc.n


cdef uint32_t recall_best(GraphC* g, RecallC* rc, uint8_t port, double* prob) noexcept nogil:
    """Greedy generation's choice among the gathered candidates, by bytes rather than by token:
    the same continuation is learned under several segmentations ("s", "st", "stone ", "stone
    tree"), so one token's probability says little about the text. The candidates' payloads are
    walked as the port's trie from its root, each state weighing the candidates at or below it:
    at each prefix, stop at the token spelling exactly that prefix (STOP at the root) if it is at
    least as probable as the heaviest longer branch, else follow that branch (equal weights: the
    smaller byte). Stopping early is safe: the next step's contexts (byte suffixes) see the same
    bytes however they were cut. Returns the token (NONE if there is none, or, with g.pool.err set,
    without memory) and in prob the probability that the continuation starts with its bytes
    (STOP: its own)."""
    cdef uint32_t i, d, s, cur, best, v
    cdef uint32_t chosen = NONE
    cdef double chosen_p = -1.0, cur_mass = 0.0, best_mass
    prob[0] = 0.0
    for i in range(rc.n_states):
        rc.state_mark[rc.states[i]] = 0
    rc.n_states = 0
    if _recall_room(rc, 0, g.n_trie) < 0:
        g.pool.err = ERR_NOMEM
        g.pool.err_request = <size_t>g.n_trie * (sizeof(double) + sizeof(uint32_t) + 1)
        return NONE
    for i in range(rc.n):
        d = rc.ids[i]
        if d == STOP:
            chosen, chosen_p = STOP, rc.p[d]
            continue
        s = g.nodes[d].state
        while s != NONE:
            if not rc.state_mark[s]:
                rc.state_mark[s] = 1
                rc.states[rc.n_states] = s
                rc.n_states += 1
                rc.mass[s] = 0.0
            rc.mass[s] += rc.p[d]
            s = g.trie[s].parent
    cur = g.port_root[port]
    if cur == NONE or not rc.state_mark[cur]:
        if chosen != NONE:
            prob[0] = chosen_p if chosen_p < 1.0 else 1.0
        return chosen
    cur_mass = rc.mass[cur]
    while True:
        best = NONE
        best_mass = 0.0
        s = g.trie[cur].first_child
        while s != NONE:
            # the heaviest branch; equal weights go to the smaller byte (never to ids)
            if rc.state_mark[s] and (best == NONE or rc.mass[s] > best_mass or (
                    rc.mass[s] == best_mass and g.trie[s].byte < g.trie[best].byte)):
                best, best_mass = s, rc.mass[s]
            s = g.trie[s].next_sibling
        if best == NONE or (chosen != NONE and chosen_p >= best_mass):
            break
        cur, cur_mass = best, best_mass
        chosen, chosen_p = NONE, -1.0
        v = g.trie[cur].node
        if v != NONE and v < rc.cap and rc.mark[v]:
            chosen, chosen_p = v, rc.p[v]
    if chosen == NONE:
        return NONE
    prob[0] = chosen_p if chosen == STOP else cur_mass
    if prob[0] > 1.0:
        prob[0] = 1.0
    return chosen


cdef void recall_free(RecallC* rc) noexcept nogil:
    free(rc.p)
    free(rc.ids)
    free(rc.mark)
    free(rc.mass)
    free(rc.states)
    free(rc.state_mark)
    memset(rc, 0, sizeof(RecallC))

# --- spelled probabilities ------------------------------------------------------------------------
# A token is predicted the way its bytes spell it: P(v) is the product, along v's trie path, of the
# probability of each next unit (a first byte on a port, or a whole empty-payload token, at the
# root; then the next byte or the end of the token), each interpolated over the contexts from
# the least specific to the most specific, down to the trie's own aggregates (order 0, which
# multiply out to the unigram (count + 1) / (total + nodes) of prob_of). A token never seen after
# a context still gets that context's evidence for its first bytes ("the c" seen: "cap" shares
# "ca"), where prob_of gave it only escapes: wiki held-out 2.503 -> 2.305 bits per byte with
# hierarchy (47% of held-out tokens are new to every context and cost 63% of the bits).
# Tokens greedy segmentation rules out after a (a+w is a node: every token starting with w) are
# removed at the step where w's last byte would be spelled, and that step renormalised; so is a
# unit every token below which is ruled out further down (_dead), whose mass would otherwise be
# lost. predict walks the same steps best-first (spell_step), so its top k are exact.

cdef struct SpellStep:
    uint64_t n             # count of the context's successors with the step's prefix
    uint64_t d             # distinct next units among them
    uint64_t hit           # ... whose next unit is the token's
    uint64_t ex_cnt        # ... whose next unit is ruled out (summed counts)
    uint64_t ex_items      # distinct ruled-out units among them


cdef inline uint32_t _unit0(GraphC* g, uint32_t u) noexcept nogil:
    """A token's first unit: the trie state of its first byte, or the token itself if it has no
    payload (STOP, port markers), tagged by the top bit."""
    cdef NodeC* nd = &g.nodes[u]
    if nd.payload_len == 0:
        return 0x80000000u | u
    return trie_step(g, g.port_root[nd.port], g.arena[nd.payload_off])


cdef inline uint32_t _seen_mask(uint32_t distinct) noexcept nogil:
    """Mask of the unit set for a context of this many successors (at most half full)."""
    cdef uint32_t mask = 15
    while mask + 1 < 2 * distinct:
        mask = mask * 2 + 1
    return mask


cdef inline bint _seen_add(uint32_t* seen, uint32_t mask, uint32_t unit) noexcept nogil:
    """Add a first unit (a trie state) to the open-addressing set; True if it was new."""
    cdef uint32_t h = fmix64(unit) & mask
    while seen[h] != 0:
        if seen[h] == unit + 1:
            return False
        h = (h + 1) & mask
    seen[h] = unit + 1
    return True


cdef void _spell_walk(GraphC* g, uint32_t ci, uint32_t v, uint64_t* ex, uint8_t ex_port,
                      SpellStep* st, uint64_t* bits, uint32_t* seen) noexcept nogil:
    """One context's statistics at every step of v's spelling, in one pass over its successor
    list: a successor sharing the first l bytes with v is in every step's range up to l, and at
    step l it continues with its own next unit. `bits` is scratch of 5 words per step; `seen`
    zeroed scratch of at least twice the context's successors rounded up to a power of two (the
    first units on other ports), zeroed again on return."""
    cdef NodeC* nv = &g.nodes[v]
    cdef NodeC* nu
    cdef uint32_t L = nv.payload_len, e = g.ctxs[ci].head, u, c, l, lim, x, i
    cdef uint32_t seen_mask = _seen_mask(g.ctxs[ci].distinct)
    cdef uint64_t exact = 0, above = 0, here
    cdef const uint8_t* t = g.arena + nv.payload_off
    cdef const uint8_t* q
    cdef bint others = False, ruled_out, here_out = nv.port == ex_port
    memset(st, 0, (L + 1) * sizeof(SpellStep))
    memset(bits, 0, (L + 1) * 5 * sizeof(uint64_t))
    while e != NONE:
        u = g.edges[e].dst
        c = g.edges[e].count
        e = g.edges[e].next
        nu = &g.nodes[u]
        if u == v:
            exact += c
            st[L].n += c
            continue
        if nu.payload_len == 0:           # STOP, a port marker: a unit of its own at the root
            st[0].n += c
            st[0].d += 1
            continue
        if nu.port != nv.port:            # a first byte on another port: one unit per state
            st[0].n += c
            ruled_out = nu.port == ex_port and (ex[nu.first >> 6] >> (nu.first & 63)) & 1
            if _seen_add(seen, seen_mask, trie_step(g, g.port_root[nu.port], nu.first)):
                st[0].d += 1
                others = True
                if ruled_out:
                    st[0].ex_items += 1
            if ruled_out:
                st[0].ex_cnt += c
            continue
        # shared prefix length l; the successor continues with x at step l
        if L == 0 or nu.first != t[0]:
            l = 0                         # most successors: told apart by their first byte
            x = nu.first
        else:
            q = g.arena + nu.payload_off
            lim = nu.payload_len if nu.payload_len < L else L
            l = 1
            while l < lim and q[l] == t[l]:
                l += 1
            x = 256 if nu.payload_len == l else q[l]
        st[l].n += c                      # summed over the steps below afterwards
        ruled_out = x < 256 and (l > 0 or here_out) and (ex[l * 4 + (x >> 6)] >> (x & 63)) & 1
        if not (bits[l * 5 + (x >> 6)] >> (x & 63)) & 1:
            bits[l * 5 + (x >> 6)] |= (<uint64_t>1) << (x & 63)
            st[l].d += 1
            if ruled_out:
                st[l].ex_items += 1
        if ruled_out:
            st[l].ex_cnt += c
    # Step i's range holds every successor sharing at least i bytes; those sharing more than i
    # (or v itself, at the last step) continue with v's own unit.
    st[L].hit = exact
    if exact:
        st[L].d += 1
    i = L
    while True:                           # above: successors sharing more than i bytes
        here = st[i].n
        st[i].n = here + above
        if i < L:
            st[i].hit = above
            if above:
                st[i].d += 1
        above += here
        if i == 0:
            break
        i -= 1
    if others:
        memset(seen, 0, (seen_mask + 1) * sizeof(uint32_t))


cdef inline uint32_t _block_start(GraphC* g, uint32_t* ids, uint32_t lo, uint32_t hi, uint8_t port,
                                  const uint8_t* c, uint32_t len_c) noexcept nogil:
    """First index in [lo, hi) of the sorted ids not before the block of tokens starting with c."""
    cdef uint32_t mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if _cmp_prefix(g, ids[mid], port, c, len_c) < 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline uint32_t _block_end(GraphC* g, uint32_t* ids, uint32_t lo, uint32_t hi, uint8_t port,
                                const uint8_t* c, uint32_t len_c) noexcept nogil:
    """First index in [lo, hi) of the sorted ids after the block of tokens starting with c."""
    cdef uint32_t mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if _cmp_prefix(g, ids[mid], port, c, len_c) <= 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline uint32_t _unit_end(GraphC* g, uint32_t* ids, const uint32_t* keys, uint32_t lo,
                               uint32_t hi, uint32_t i, uint32_t x) noexcept nogil:
    """In a range of sorted ids that all share their first i bytes (and port), the first index
    after those whose byte i is x: one byte per comparison instead of a prefix compare. Up to
    byte 4 the byte comes from keys (the copy's _tail_key of each id, read in order), not from
    the node and its payload: two dependent cache misses per probe were ~40% of scoring."""
    cdef uint32_t mid, shift
    cdef NodeC* nd
    if 1 <= i <= 4:
        shift = 32 - 8 * i                # a payload that ended reads 0 there, and goes right
        while lo < hi:                    # like a byte at most x (see below)
            mid = (lo + hi) >> 1
            if (keys[mid] >> shift) & 0xFF <= x:
                lo = mid + 1
            else:
                hi = mid
        return lo
    while lo < hi:
        mid = (lo + hi) >> 1
        nd = &g.nodes[ids[mid]]
        if nd.payload_len > i and g.arena[nd.payload_off + i] <= x:
            lo = mid + 1
        elif nd.payload_len <= i:
            lo = mid + 1                  # the token ending at i sorts first
        else:
            hi = mid
    return lo


cdef void _spell_sorted(GraphC* g, ExclSlotC* slot, uint32_t v, uint32_t i, uint64_t* ex,
                        uint8_t ex_port, SpellStep* st, uint32_t* lo_io,
                        uint32_t* hi_io) noexcept nogil:
    """The same statistics from a busy context's successors sorted by (port, payload): ranges of
    prefix sums, and the distinct next units by jumping from block to block. [lo_io, hi_io) is
    the block of v's first i bytes on entry, of its first i + 1 bytes on return."""
    cdef uint32_t* ids = g.excl.ids + slot.off
    cdef const uint32_t* keys = g.excl.keys + slot.off
    cdef uint32_t* pre = g.excl.pre + slot.pre_off
    cdef NodeC* nv = &g.nodes[v]
    cdef NodeC* nu
    cdef uint32_t lo = lo_io[0], hi = hi_io[0], pos, end, x, tx, shift
    cdef const uint8_t* t = g.arena + nv.payload_off
    cdef uint8_t port = nv.port
    cdef uint32_t* first
    cdef uint32_t b, ei
    st.n = st.d = st.hit = st.ex_cnt = st.ex_items = 0
    lo_io[0] = hi_io[0] = 0
    if i == 0 and port == 0 and (ex_port == 0 or not (ex[0] | ex[1] | ex[2] | ex[3])):
        # the first step from the per-first-byte table, and the first byte's block
        first = g.excl.first + slot.first_off
        st.n = pre[slot.n] - pre[0]
        st.d = slot.d0
        if nv.payload_len:
            st.hit = first[t[0]]
            lo = _block_start(g, ids, lo, hi, port, t, 1)
            lo_io[0] = lo
            hi_io[0] = _block_end(g, ids, lo, slot.n, port, t, 1)
        else:
            ei = edge_find(g, slot.ctx1 - 1, v)
            st.hit = g.edges[ei].count if ei != NONE else 0
        for b in range(256):
            if (ex[b >> 6] >> (b & 63)) & 1:
                st.ex_cnt += first[b]
                st.ex_items += first[b] != 0
        return
    st.n = pre[hi] - pre[lo]
    tx = 256 if nv.payload_len == i else t[i]
    pos = lo
    shift = 32 - 8 * i if 1 <= i <= 4 else 0
    while pos < hi:
        # Past the first byte the block is on v's port, so a non-zero key byte is all a unit
        # needs; a zero one is a payload that ends here or a 0 byte: the node says which.
        x = (keys[pos] >> shift) & 0xFF if shift else 0
        if x:
            end = _unit_end(g, ids, keys, pos + 1, hi, i, x)
            if x == tx:
                st.hit += pre[end] - pre[pos]
                lo_io[0] = pos
                hi_io[0] = end
            elif (ex[x >> 6] >> (x & 63)) & 1:
                st.ex_cnt += pre[end] - pre[pos]
                st.ex_items += 1
            st.d += 1
            pos = end
            continue
        nu = &g.nodes[ids[pos]]
        if i == 0 and nu.payload_len == 0:
            end = pos + 1                 # an empty-payload token is a unit of its own
            if ids[pos] == v:
                st.hit += pre[end] - pre[pos]
        elif nu.payload_len == i:
            end = pos + 1                 # the token that ends here (one at most)
            if tx == 256:
                st.hit += pre[end] - pre[pos]
        else:
            x = g.arena[nu.payload_off + i]
            end = _unit_end(g, ids, keys, pos + 1, hi, i, x) if i > 0 else \
                _block_end(g, ids, pos + 1, hi, nu.port, g.arena + nu.payload_off, 1)
            if nu.port == port and x == tx:
                st.hit += pre[end] - pre[pos]
                lo_io[0] = pos
                hi_io[0] = end
            elif (nu.port == ex_port if i == 0 else nu.port == port) and (ex[x >> 6] >> (x & 63)) & 1:
                st.ex_cnt += pre[end] - pre[pos]
                st.ex_items += 1
        st.d += 1
        pos = end


cdef bint _dead(GraphC* g, uint32_t s, uint32_t t) noexcept nogil:
    """Whether every token below trie state s is ruled out after a, where t is the state of a
    followed by the same bytes (not a node: then s would be ruled out itself). Such a unit gets
    no mass: the tokens below it are never scored, so mass given to it would be lost. Single
    bytes are nodes, so this never happens at the root."""
    cdef uint32_t ch, tc
    if s == NONE or g.trie[s].node != NONE:
        return False                      # no such prefix on v's side, or its own token is fine
    ch = g.trie[s].first_child
    while ch != NONE:
        tc = trie_step(g, t, g.trie[ch].byte)
        if tc == NONE or (g.trie[tc].node == NONE and not _dead(g, ch, tc)):
            return False
        ch = g.trie[ch].next_sibling
    return True


cdef inline void _ruled_out(GraphC* g, uint32_t ta, uint32_t root, bint deep,
                           uint64_t* ex) noexcept nogil:
    """ex[0:4] = the next bytes ruled out after a + prefix (ta: its trie state, NONE if none;
    root: the prefix's own state): those making a node, and below the first step those whose
    every token is ruled out further down."""
    cdef uint32_t ch
    ex[0] = ex[1] = ex[2] = ex[3] = 0
    if ta == NONE:
        return
    ch = g.trie[ta].first_child
    while ch != NONE:
        if g.trie[ch].node != NONE or (deep and _dead(g, trie_step(g, root, g.trie[ch].byte), ch)):
            ex[g.trie[ch].byte >> 6] |= (<uint64_t>1) << (g.trie[ch].byte & 63)
        ch = g.trie[ch].next_sibling


cdef inline double _ruled_out_mass(GraphC* g, uint32_t root, uint64_t* ex, double agg) noexcept nogil:
    """Order 0's probability of the ruled-out bytes below root."""
    cdef double mass = 0.0
    cdef uint32_t ch
    if not (ex[0] | ex[1] | ex[2] | ex[3]):
        return 0.0
    ch = g.trie[root].first_child
    while ch != NONE:
        if (ex[g.trie[ch].byte >> 6] >> (g.trie[ch].byte & 63)) & 1:
            mass += g.trie[ch].agg / agg
        ch = g.trie[ch].next_sibling
    return mass


cdef inline uint32_t _scratch_size(GraphC* g, uint32_t* cis, uint32_t m,
                                   ExclSlotC** slots) noexcept nogil:
    """slots[k]: context k's sorted copy (NULL: walked); returns the unit set size the walked
    ones need (a power of two, at least 16)."""
    cdef uint32_t k, most = 0, size = 16
    for k in range(m):
        slots[k] = NULL
        if cis[k] == NONE or g.ctxs[cis[k]].total == 0:
            continue
        if g.ctxs[cis[k]].distinct >= EXCL_MIN:
            slots[k] = _excl_get(g, cis[k])
        if slots[k] == NULL and g.ctxs[cis[k]].distinct > most:
            most = g.ctxs[cis[k]].distinct
    while size < 2 * most:
        size *= 2
    return size


cdef enum:
    SPELL_STACK = 65              # steps (payload bytes + 1) handled without a heap allocation


cdef double prob_spelled(GraphC* g, uint32_t a, uint32_t* cis, const uint8_t* kinds, uint32_t m,
                         uint32_t v, SmoothC* sm) noexcept nogil:
    """P(next token = v) spelled along its trie path (see above); 0 if greedy segmentation rules
    v out after a. Sums to 1 over all nodes. sm[kinds[k]] smooths context cis[k]."""
    cdef NodeC* nv = &g.nodes[v]
    cdef uint32_t L = nv.payload_len, i, k, ts, ta, root, n_steps = L + 1
    cdef uint8_t ex_port
    cdef double agg, dd, aa, w, prob = 1.0
    cdef SpellStep* st
    cdef ExclSlotC* slots[MAX_ORDERS]
    cdef uint32_t lo, hi
    cdef uint64_t ex_small[SPELL_STACK * 4]
    cdef uint64_t bits_small[SPELL_STACK * 5]
    cdef double pt_small[SPELL_STACK]
    cdef double px_small[SPELL_STACK]
    cdef SpellStep st_small[SPELL_STACK]
    cdef uint64_t* ex = ex_small
    cdef uint64_t* bits = bits_small
    cdef double* p_t = pt_small
    cdef double* p_x = px_small
    cdef uint32_t seen_small[1024]
    cdef uint32_t* seen = seen_small
    cdef uint32_t size
    cdef void* heap = NULL
    if is_excluded(g, a, v):
        return 0.0
    st = st_small
    size = _scratch_size(g, cis, m, slots)
    if size > 1024 or n_steps > SPELL_STACK:
        # one block for everything a long payload or a very busy context needs
        heap = malloc(size * sizeof(uint32_t) + n_steps * (9 * sizeof(uint64_t) +
                      2 * sizeof(double) + sizeof(SpellStep)))
        if heap == NULL:
            return prob_of(g, cis, m, v, sm + KIND_TOKEN)   # out of scratch: unspelled
        seen = <uint32_t*>heap
        ex = <uint64_t*>(seen + size)
        bits = ex + 4 * n_steps
        p_t = <double*>(bits + 5 * n_steps)
        p_x = p_t + n_steps
        st = <SpellStep*>(p_x + n_steps)
    memset(seen, 0, size * sizeof(uint32_t))
    # Per step: the units ruled out (bytes x with a + prefix + x a node) and order 0, the trie's
    # aggregates (the whole vocabulary at the root). At the root the ruled-out units are first
    # bytes on a's port, whatever v's port; further down only if v continues on a's port.
    ta = g.nodes[a].state if a != STOP and g.nodes[a].payload_len > 0 else NONE
    ex_port = g.nodes[a].port
    ts = g.port_root[nv.port] if L else NONE
    for i in range(n_steps):
        root = g.port_root[ex_port] if i == 0 else ts
        _ruled_out(g, ta, root, i > 0, ex + 4 * i)
        agg = <double>g.total_count + g.n_nodes if i == 0 else <double>g.trie[ts].agg
        if i == L:
            p_t[i] = (nv.count + 1.0) / agg
        else:
            ts = trie_step(g, ts, g.arena[nv.payload_off + i])
            p_t[i] = g.trie[ts].agg / agg
        p_x[i] = _ruled_out_mass(g, root, ex + 4 * i, agg)
        if ta != NONE:
            ta = trie_step(g, ta, g.arena[nv.payload_off + i]) \
                if i < L and ex_port == nv.port else NONE
    # Each context, least specific first, mixes its counts into every step.
    for k in range(m):
        if cis[k] == NONE or g.ctxs[cis[k]].total == 0:
            continue
        if slots[k] != NULL:
            lo = 0
            hi = slots[k].n
            for i in range(n_steps):
                if lo < hi:
                    _spell_sorted(g, slots[k], v, i, ex + 4 * i, ex_port, &st[i], &lo, &hi)
                else:
                    st[i].n = 0           # no successor shares v's first i bytes
        else:
            _spell_walk(g, cis[k], v, ex, ex_port, st, bits, seen)
        for i in range(n_steps):
            if st[i].n == 0:
                continue
            _params(sm + kinds[k], st[i].d, &dd, &aa)
            w = aa + dd * <double>st[i].d
            p_t[i] = ((<double>st[i].hit - dd if st[i].hit else 0.0) + w * p_t[i]) / \
                (<double>st[i].n + aa)
            p_x[i] = (<double>st[i].ex_cnt - dd * <double>st[i].ex_items + w * p_x[i]) / \
                (<double>st[i].n + aa)
    for i in range(n_steps):
        prob *= p_t[i] / (1.0 - p_x[i])
    if heap != NULL:
        free(heap)
    return prob


cdef int spell_step(GraphC* g, uint32_t a, uint32_t* cis, const uint8_t* kinds, uint32_t m,
                    uint8_t port, const uint8_t* pfx, uint32_t len_p, double* out) noexcept nogil:
    """The next-unit distribution of prob_spelled's step after the bytes pfx on port, as it
    would be for any token continuing them: out[x] for each next byte x, out[256] for ending
    here (STOP at the root), 0 for units that are ruled out or have no token. Other ports' units
    and port markers at the root keep their mass but are not listed. -1 if pfx is not a prefix
    of any token or is itself ruled out after a; -1 with g.pool.err on allocation failure."""
    cdef uint32_t ts, ta, ch, k, e, u, c, x, d, i, seen_mask, size
    cdef uint64_t cnt[257]
    cdef uint64_t ex[4]
    cdef uint64_t n
    cdef double p[257]
    cdef double agg, dd, aa, w, p_x
    cdef NodeC* nu
    cdef ExclSlotC* slot
    cdef ExclSlotC* slots[MAX_ORDERS]
    cdef uint32_t* ids
    cdef uint32_t* pre
    cdef uint32_t seen_small[1024]
    cdef uint32_t* seen = seen_small
    cdef uint32_t lo, hi, pos, end
    cdef uint64_t ex_cnt, ex_items
    cdef uint8_t ex_port = g.nodes[a].port
    cdef SmoothC* sm = score_smoothing(g)
    # where the prefix and a + prefix are in the trie
    ts = g.port_root[port]
    if ts == NONE:
        return -1
    ta = g.nodes[a].state if a != STOP and g.nodes[a].payload_len > 0 else NONE
    for i in range(len_p):
        ts = trie_step(g, ts, pfx[i])
        if ts == NONE:
            return -1
        if ta != NONE:
            ta = trie_step(g, ta, pfx[i]) if ex_port == port else NONE
            if ta != NONE and g.trie[ta].node != NONE:
                return -1
    _ruled_out(g, ta, ts, len_p > 0, ex)
    # order 0
    memset(p, 0, sizeof(p))
    agg = <double>g.total_count + g.n_nodes if len_p == 0 else <double>g.trie[ts].agg
    ch = g.trie[ts].first_child
    while ch != NONE:
        p[g.trie[ch].byte] = g.trie[ch].agg / agg
        ch = g.trie[ch].next_sibling
    if len_p == 0:
        p[256] = (g.nodes[STOP].count + 1.0) / agg
    elif g.trie[ts].node != NONE:
        p[256] = (g.nodes[g.trie[ts].node].count + 1.0) / agg
    # ruled-out mass at order 0 (on a's port's root at the first step)
    p_x = _ruled_out_mass(g, g.port_root[ex_port] if len_p == 0 else ts, ex, agg)
    size = _scratch_size(g, cis, m, slots)
    if size > 1024:
        seen = <uint32_t*>malloc(size * sizeof(uint32_t))
        if seen == NULL:
            g.pool.err = ERR_NOMEM
            return -1
    for k in range(m):
        if cis[k] == NONE or g.ctxs[cis[k]].total == 0:
            continue
        memset(cnt, 0, sizeof(cnt))
        n = 0
        d = 0
        ex_cnt = 0
        ex_items = 0
        slot = slots[k]
        if slot != NULL:
            ids = g.excl.ids + slot.off
            pre = g.excl.pre + slot.pre_off
            lo = 0
            hi = slot.n
            if len_p > 0:
                lo = _block_start(g, ids, lo, hi, port, pfx, len_p)
                hi = _block_end(g, ids, lo, slot.n, port, pfx, len_p)
            n = pre[hi] - pre[lo]
            pos = lo
            while pos < hi:
                nu = &g.nodes[ids[pos]]
                if nu.payload_len == len_p:
                    end = pos + 1         # an empty token at the root, or the prefix's own token
                    if nu.port == port and (len_p > 0 or ids[pos] == STOP):
                        cnt[256] += pre[end] - pre[pos]
                else:
                    x = g.arena[nu.payload_off + len_p]
                    end = _unit_end(g, ids, g.excl.keys + slot.off, pos + 1, hi, len_p, x) \
                        if len_p > 0 else \
                        _block_end(g, ids, pos + 1, hi, nu.port, g.arena + nu.payload_off, 1)
                    if nu.port == port:
                        cnt[x] += pre[end] - pre[pos]
                    if nu.port == ex_port and (ex[x >> 6] >> (x & 63)) & 1:
                        ex_cnt += pre[end] - pre[pos]
                        ex_items += 1
                d += 1
                pos = end
        else:
            seen_mask = _seen_mask(g.ctxs[cis[k]].distinct)
            if len_p == 0:
                memset(seen, 0, (seen_mask + 1) * sizeof(uint32_t))
            e = g.ctxs[cis[k]].head
            while e != NONE:
                u = g.edges[e].dst
                c = g.edges[e].count
                e = g.edges[e].next
                nu = &g.nodes[u]
                if len_p == 0:
                    n += c
                    if nu.payload_len == 0:
                        d += 1
                        if u == STOP:
                            cnt[256] += c
                        continue
                    if _seen_add(seen, seen_mask, trie_step(g, g.port_root[nu.port], nu.first)):
                        d += 1
                        if nu.port == ex_port and (ex[nu.first >> 6] >> (nu.first & 63)) & 1:
                            ex_items += 1
                    if nu.port == port:
                        cnt[nu.first] += c
                    if nu.port == ex_port and (ex[nu.first >> 6] >> (nu.first & 63)) & 1:
                        ex_cnt += c
                    continue
                if nu.port != port or nu.payload_len < len_p or \
                        memcmp(g.arena + nu.payload_off, pfx, len_p) != 0:
                    continue
                n += c
                x = 256 if nu.payload_len == len_p else g.arena[nu.payload_off + len_p]
                if cnt[x] == 0:
                    d += 1
                    if x < 256 and (ex[x >> 6] >> (x & 63)) & 1:
                        ex_items += 1
                cnt[x] += c
                if x < 256 and (ex[x >> 6] >> (x & 63)) & 1:
                    ex_cnt += c
        if n == 0:
            continue
        _params(sm + kinds[k], d, &dd, &aa)
        w = aa + dd * <double>d
        for x in range(257):
            p[x] = ((<double>cnt[x] - dd if cnt[x] else 0.0) + w * p[x]) / (<double>n + aa)
        p_x = (<double>ex_cnt - dd * <double>ex_items + w * p_x) / (<double>n + aa)
    for x in range(257):
        out[x] = 0.0 if x < 256 and (ex[x >> 6] >> (x & 63)) & 1 and \
            (len_p > 0 or ex_port == port) else p[x] / (1.0 - p_x)
    if seen != seen_small:
        free(seen)
    return 0


# --- attention over the episode's own tokens -----------------------------------------------------
# The graph remembers what followed what in everything it was fed; an episode's own earlier tokens
# say what this text is about. Heads attend over the trace's window of the episode's last
# ATTN_WINDOW tokens. With hierarchy, head 0 (copy) attends to every token and head h >= 1
# (induction, order h) to the tokens whose h predecessors equal the last h tokens; without it,
# where tokens are bytes and the byte contexts already see the last few, head h is an induction
# head of order 3 * 2^h (3, 6, 12, 24 bytes). Each head's values form a distribution over the
# tokens it attends to, mixed into the graph's prediction with a weight that grows with how much
# it attends to: w = gain * n / (n + half). Every token greedy segmentation rules out is left out
# of the heads too, so the mixture stays a proper distribution. Wiki held-out (one episode per
# line): 2.305 -> 2.256 bits/byte with the copy head and order 1 (-0.027 and -0.022; orders 2 and
# 3 add nothing, so Limits.max_heads defaults to 2); bytewise 2.093 -> 2.055 with 3 and 6 bytes.
# Measured and not kept (Python prototypes on wiki): a copy head decaying with distance; a gate
# from the model's own confidence; gates learned per previous token, as per-edge transformers
# would (-0.0009); with hierarchy, heads matching the last 3..12 bytes rather than tokens (-0.002);
# without it, heads of 1..3 bytes (bytewise 2.093 -> 2.330, with the copy head) or 2, 4, 8 (2.107).
# With word patterns the heads were retuned (coordinate descent on wiki_train split 88/12, then
# measured once): copy (gain, half) (0.05, 5) -> (0.1, 20): wiki held-out 2.1021 -> 2.0989
# bits/byte with induction (0.4, 0.5) -> (0.3, 0.5). Induction (0.2, 0.3) validated 0.0016 better
# (held-out 2.0987, big.txt 16 MB 1.8987 -> 1.8955) but no longer ranks a name seen once in the
# episode first after its cue ("... climb Mount" -> " Z", tests/test_mechanisms.py).
cdef enum:
    ATTN_COPY = 0
    ATTN_INDUCTION = 1
    ATTN_BYTES = 2
cdef double ATTN_GAIN[3]
cdef double ATTN_HALF[3]
ATTN_GAIN[:] = [0.1, 0.3, 0.6]
ATTN_HALF[:] = [20.0, 0.5, 1.0]


def _set_attention(str which, double gain, double half):
    """Tuning hook for experiments: which = "copy", "induction" or "bytes" (bytewise heads)."""
    cdef int k = ATTN_COPY if which == "copy" else ATTN_INDUCTION if which == "induction" else \
        ATTN_BYTES
    if not (0.0 <= gain < 1.0 and half >= 0.0):
        raise ValueError("need a gain in [0, 1) and half >= 0")
    ATTN_GAIN[k] = gain
    ATTN_HALF[k] = half


cdef uint32_t attn_values(GraphC* g, TraceC* tr, uint32_t* vals) noexcept nogil:
    """The window's tokens in episode order, NONE for those no head may predict (markers, and
    tokens greedy segmentation rules out after the last one). Returns how many (0: heads off)."""
    cdef uint32_t n = tr.n_seen if tr.n_seen < ATTN_WINDOW else ATTN_WINDOW
    cdef uint32_t i, u, first = tr.n_seen - n
    if g.attn_heads == 0:
        return 0
    for i in range(n):
        u = tr.seen[(first + i) & (ATTN_WINDOW - 1)]
        vals[i] = NONE if (g.nodes[u].payload_len == 0 or is_excluded(g, tr.ids[0], u)) else u
    return n


cdef double attend(GraphC* g, TraceC* tr, uint32_t* vals, uint32_t n, uint32_t v, double p) noexcept nogil:
    """p, the graph's P(v), with the heads' distributions mixed in, lower orders first."""
    cdef uint32_t h, i, j, order, first = tr.n_seen - n
    cdef int kind
    cdef bint bytewise = g.form_min_count == 0xFFFFFFFFu
    cdef double att, hit, w
    cdef uint32_t* seen = tr.seen
    for h in range(g.attn_heads):
        if bytewise:
            order = 3u << h if h < 6 else ATTN_WINDOW
            kind = ATTN_BYTES
        else:
            order = h
            kind = ATTN_INDUCTION if h else ATTN_COPY
        if order >= n:
            break
        att = 0.0
        hit = 0.0
        for i in range(order, n):
            if vals[i] == NONE:
                continue
            j = 1
            while j <= order and seen[(first + i - j) & (ATTN_WINDOW - 1)] == \
                    seen[(tr.n_seen - j) & (ATTN_WINDOW - 1)]:
                j += 1
            if j > order:
                att += 1.0
                hit += vals[i] == v
        if att > 0.0:
            w = ATTN_GAIN[kind] * att / (att + ATTN_HALF[kind])
            p = (1.0 - w) * p + w * hit / att
    return p


cdef double prob_attended(GraphC* g, TraceC* tr, uint32_t* cis, uint32_t m, uint32_t* vals,
                          uint32_t n, uint32_t v) noexcept nogil:
    """prob_next with the window's values already gathered (attn_values), for queries that ask
    about many tokens after the same trace."""
    cdef double p = prob_spelled(g, tr.ids[0], cis, tr.kinds, m, v, score_smoothing(g))
    return attend(g, tr, vals, n, v, p) if n else p


cdef double prob_next(GraphC* g, TraceC* tr, uint32_t* cis, uint32_t m, uint32_t v) noexcept nogil:
    """P(next token = v) given the trace, with the tokens greedy segmentation rules out removed
    and the rest renormalised, and the attention heads mixed in."""
    cdef uint32_t vals[ATTN_WINDOW]
    return prob_attended(g, tr, cis, m, vals, attn_values(g, tr, vals), v)


cdef double score_episode(GraphC* g, const uint8_t* data, size_t n, uint8_t port) noexcept nogil:
    """Code length in bits of one episode (its tokens, then STOP) under the frozen model."""
    cdef TraceC tr
    cdef uint32_t cis[MAX_ORDERS]
    cdef uint32_t m, v, length
    cdef size_t pos = 0
    cdef double bits = 0.0
    if g.port_root[port] == NONE:
        return 8.0 * n                    # an unseen port: every byte costs a uniform 8 bits
    trace_reset(&tr)
    while pos < n:
        v = match_longest(g, port, data + pos, n - pos, &length)
        m = trace_contexts(g, &tr, cis)
        bits -= log2(prob_next(g, &tr, cis, m, v))
        trace_push(&tr, v, MAX_CONTEXT)
        pos += length
    m = trace_contexts(g, &tr, cis)
    bits -= log2(prob_next(g, &tr, cis, m, STOP))
    return bits


cdef void _compact_edges(GraphC* g, uint32_t shift, bint remap) noexcept nogil:
    """Keep the edges whose count >> shift is non-zero (with remap, also whose destination
    survives: nodes[dst].aux != NONE, renumbered to aux), their counts shifted; drop the contexts
    left without edges; compact both arrays in place (order kept) and set their lengths. Lists,
    totals and indexes are the caller's to rebuild."""
    cdef uint32_t c, e, w, nc = 0, ne = 0
    cdef EdgeC* ed
    # contexts keep `distinct` as a survivor counter, then `head` as their new index
    for c in range(g.n_ctxs):
        g.ctxs[c].distinct = 0
    for e in range(g.n_edges):
        ed = &g.edges[e]
        if (ed.count >> shift) and (not remap or g.nodes[ed.dst].aux != NONE):
            g.ctxs[ed.ctx].distinct += 1
    for c in range(g.n_ctxs):
        if g.ctxs[c].distinct:
            g.ctxs[c].head = nc
            nc += 1
        else:
            g.ctxs[c].head = NONE
    for e in range(g.n_edges):
        ed = &g.edges[e]
        if (ed.count >> shift) and (not remap or g.nodes[ed.dst].aux != NONE):
            w = g.ctxs[ed.ctx].head
            g.edges[ne] = ed[0]
            g.edges[ne].ctx = w
            g.edges[ne].count = ed.count >> shift
            if remap:
                g.edges[ne].dst = g.nodes[ed.dst].aux
            ne += 1
    for c in range(g.n_ctxs):
        w = g.ctxs[c].head
        if w != NONE:
            g.ctxs[w].key_lo = g.ctxs[c].key_lo
            g.ctxs[w].key_hi = g.ctxs[c].key_hi
    g.n_ctxs = nc
    g.n_edges = ne


cdef uint64_t _prune_round(GraphC* g, TraceC* protect) noexcept nogil:
    """Age everything once (halve counts) and drop what reaches zero, compacting in place.
    Allocation-free apart from optional shrinking, so it works at the very edge of the budget.
    Returns the number of items removed."""
    cdef uint32_t v, w, i, nn = 0, arena = 0
    cdef uint32_t old_nodes = g.n_nodes, old_ctxs = g.n_ctxs, old_edges = g.n_edges
    cdef NodeC* nd
    # 1. nodes: halve counts; hierarchy nodes that reach zero go, unless the trace holds them.
    for v in range(g.n_nodes):
        g.nodes[v].aux = 0
    if protect != NULL:
        for i in range(protect.n):
            g.nodes[protect.ids[i]].aux = 1
        if protect.pending != NONE:
            g.nodes[protect.pending].aux = 1
    for v in range(g.n_nodes):
        nd = &g.nodes[v]
        nd.count >>= 1
        if nd.level > 0 and nd.count == 0 and nd.aux == 0:
            nd.aux = NONE
        else:
            nd.aux = nn
            nn += 1
    # 2. edges (halved, ends remapped) and contexts. A context holding a dropped node is never
    #    looked up again (its key names the payload) and ages out.
    _compact_edges(g, 1, True)
    # 3. nodes and their payloads, compacted (payload offsets grow with ids, so moves go forward).
    if protect != NULL:
        for i in range(protect.n):
            protect.ids[i] = g.nodes[protect.ids[i]].aux
        if protect.pending != NONE:
            protect.pending = g.nodes[protect.pending].aux
        protect.n_seen = 0                # ids moved; training never reads the attention window
    for v in range(g.n_nodes):
        nd = &g.nodes[v]
        if nd.left != NONE:
            nd.left = g.nodes[nd.left].aux
            nd.right = g.nodes[nd.right].aux
            if nd.left == NONE or nd.right == NONE:
                nd.left = NONE            # a pruned component: the payload stays whole
                nd.right = NONE
    for v in range(g.n_nodes):
        w = g.nodes[v].aux
        if w == NONE:
            continue
        memmove(g.arena + arena, g.arena + g.nodes[v].payload_off, g.nodes[v].payload_len)
        if w != v:
            g.nodes[w] = g.nodes[v]
        g.nodes[w].payload_off = arena
        g.nodes[w].aux = 0
        arena += g.nodes[w].payload_len
    g.n_nodes = nn
    g.n_arena = arena
    g.total_count = 0
    for v in range(nn):
        g.total_count += g.nodes[v].count
    rebuild_edge_lists(g)
    rebuild_indexes(g)
    shrink_to_fit(g)
    g.pruned_nodes += old_nodes - nn
    g.pruned_ctxs += old_ctxs - g.n_ctxs
    g.pruned_edges += old_edges - g.n_edges
    return (old_nodes - nn) + (old_ctxs - g.n_ctxs) + (old_edges - g.n_edges)


cdef int prune_to(GraphC* g, size_t target_bytes, uint64_t target_edges, TraceC* protect) noexcept nogil:
    """Age and drop structure until memory <= target_bytes and edges <= target_edges, or nothing
    more can go. Returns the number of aging rounds.
    A round often lands well below the target (most edges are seen once), but aging everything
    measured better than dropping just enough of the least recently used singletons and keeping
    every other count: 88 MB of big.txt under a 256 MiB budget, held-out bits per byte 2.2016
    against 2.2070, and 23 s against 41 s of training (more, smaller prunes)."""
    cdef int rounds = 0
    g.prunes += 1
    while g.pool.used > target_bytes or g.n_edges > target_edges:
        rounds += 1
        if _prune_round(g, protect) == 0 or rounds >= 40:
            break
    if rounds:
        cats_rebuild(g)                   # their profiles name node ids, which moved
    return rounds


cdef enum:
    AGE_BUCKETS = 4096              # singleton ages, in units of 65536 tokens (older: last bucket)


cdef void compact_caps(GraphC* g, uint64_t* caps) noexcept nogil:
    """Capacities (in store_alloc_exact's order: nodes, contexts, edges, trie, arena, then their
    four indexes) that hold the graph with 1/8 spare room, the trie sized by its actual states
    (loading's default can only bound it by the payload bytes): a function of the contents."""
    cdef uint64_t n[5]
    cdef int i
    n[0] = g.n_nodes; n[1] = g.n_ctxs; n[2] = g.n_edges; n[3] = g.n_trie; n[4] = g.n_arena
    for i in range(5):
        caps[i] = n[i] + n[i] // 8 + 64
    for i in range(4):
        caps[5 + i] = n[i] * 5 // 3 + 64


cdef uint64_t compact_bytes(GraphC* g) noexcept nogil:
    """The memory the graph takes rebuilt with compact_caps: unlike memory_bytes, which also
    counts spare capacity, a function of its contents only."""
    cdef uint64_t caps[9]
    compact_caps(g, caps)
    return (caps[0] * sizeof(NodeC) + caps[1] * sizeof(CtxC) + caps[2] * sizeof(EdgeC)
            + caps[3] * sizeof(TrieC) + caps[4]
            + (caps[5] + caps[6] + caps[7] + caps[8]) * sizeof(uint32_t) + cats_bytes(g))


cdef uint64_t _drop_old_singletons(GraphC* g, uint64_t want) noexcept nogil:
    """Drop up to `want` edges seen once, least recently used first (ties in array order), and the
    contexts left without edges; every other count and every pattern stays. Compacts in place
    (no allocation; spare capacity is kept); returns how many edges went."""
    cdef uint32_t hist[AGE_BUCKETS]
    cdef uint32_t e, age, cut
    cdef uint16_t now = <uint16_t>(g.tokens_fed >> 16)
    cdef uint64_t older = 0, at_cut
    cdef uint32_t old_ctxs = g.n_ctxs, old_edges = g.n_edges
    cdef EdgeC* ed
    memset(hist, 0, sizeof(hist))
    for e in range(g.n_edges):
        if g.edges[e].count == 1:
            age = <uint16_t>(now - g.edges[e].stamp)
            hist[age if age < AGE_BUCKETS else AGE_BUCKETS - 1] += 1
    cut = AGE_BUCKETS                     # the youngest age that loses (some of) its singletons
    while cut > 0 and older < want:
        cut -= 1
        older += hist[cut]
    if older == 0:
        return 0
    at_cut = hist[cut] - (older - want) if older > want else hist[cut]
    for e in range(g.n_edges):
        ed = &g.edges[e]
        if ed.count == 1:
            age = <uint16_t>(now - ed.stamp)
            if age >= AGE_BUCKETS:
                age = AGE_BUCKETS - 1
            if age > cut or (age == cut and at_cut > 0):
                if age == cut:
                    at_cut -= 1
                ed.count = 0              # marked
    _compact_edges(g, 0, False)
    rebuild_edge_lists(g)
    rebuild_indexes(g)
    g.pruned_ctxs += old_ctxs - g.n_ctxs
    g.pruned_edges += old_edges - g.n_edges
    return old_edges - g.n_edges


cdef int trim_to(GraphC* g, uint64_t target_bytes, uint64_t target_edges) noexcept nogil:
    """Drop the least recently used singletons until the graph, rebuilt compactly, would take at
    most target_bytes (compact_bytes) and hold at most target_edges edges, keeping every other
    count; when singletons run out, age everything (prune_to). For a merged graph over its caps,
    where one aging round would drop about half of it: 88 MB in two shards under 240 MiB each
    (1/32 vocabulary sample), held-out bits per byte 2.2324 after aging (0.9M edges kept), 2.2149
    after trimming (4.0M kept). Every decision depends on the contents only, not on spare capacity
    (which best-effort shrinking may or may not have returned).
    The caller rebuilds compactly afterwards. Returns the number of rounds."""
    cdef int rounds = 0
    cdef uint64_t want, have
    # what one more edge costs compactly (its record, its index slots); emptied contexts free more
    cdef uint64_t per_edge = sizeof(EdgeC) * 9 // 8 + sizeof(uint32_t) * 5 // 3 + 1
    g.prunes += 1
    while True:
        have = compact_bytes(g)
        if have <= target_bytes and g.n_edges <= target_edges:
            return rounds
        rounds += 1
        want = g.n_edges - target_edges if g.n_edges > target_edges else 0
        if have > target_bytes and (have - target_bytes) // per_edge + 1 > want:
            want = (have - target_bytes) // per_edge + 1
        if rounds > 16 or _drop_old_singletons(g, want) == 0:
            g.prunes -= 1                 # prune_to counts itself
            return rounds + prune_to(g, <size_t>target_bytes, target_edges, NULL)


# --- merging ------------------------------------------------------------------------------------

cdef inline uint32_t _ceil_shift(uint32_t c, uint32_t s) noexcept nogil:
    return (c + (1u << s) - 1) >> s


cdef int _absorb_into(GraphC* g, GraphC* o, uint32_t* nmap) noexcept nogil:
    cdef uint32_t u, v, l, r, c, ci, e, ei, d, sh, add, p
    cdef uint64_t key
    cdef NodeC* nu
    cdef NodeC* nv
    # Room for all of o up front: one growth instead of many rehashes, and indexes that stay
    # sparse while the lookups run (a failed probe reads a record per occupied slot it passes).
    if reserve_ctxs(g, o.n_ctxs) < 0 or reserve_edges(g, o.n_edges) < 0:
        return -1
    for p in range(256):
        if o.port_root[p] != NONE and add_port(g, <uint8_t>p) < 0:
            return -1
        if o.port_marker[p] != NONE and ensure_marker(g, <uint8_t>p) < 0:
            return -1
    # patterns, in o's order: components come before what they form
    for u in range(o.n_nodes):
        nu = &o.nodes[u]
        if u == STOP:
            v = STOP
        elif nu.payload_len == 0:
            v = g.port_marker[nu.port]
        else:
            v = node_find(g, nu.key, o.arena + nu.payload_off, nu.payload_len, nu.port)
            l = nmap[nu.left] if nu.left != NONE else NONE
            r = nmap[nu.right] if nu.right != NONE else NONE
            if v == NONE:
                if reserve_nodes(g, 1, nu.payload_len) < 0 or reserve_trie(g, nu.payload_len + 1) < 0:
                    return -1
                v = append_node(g, o.arena + nu.payload_off, nu.payload_len, nu.port, nu.level, l, r)
                trie_insert_node(g, v)
            else:
                nv = &g.nodes[v]
                if nu.level > nv.level:
                    nv.level = nu.level
                if l != NONE and l < v and r < v and (nv.left == NONE or
                        g.nodes[l].payload_len < g.nodes[nv.left].payload_len):
                    nv.left = l
                    nv.right = r
        nmap[u] = v
        nv = &g.nodes[v]
        nv.count = nv.count + nu.count if nu.count < 0xFFFFFFF0u - nv.count else 0xFFFFFFF0u
    # categories, by profile; nodes new to one keep the other's
    cdef uint32_t* catmap = <uint32_t*>malloc((<size_t>o.n_cats + 1) * sizeof(uint32_t))
    if catmap == NULL:
        g.pool.err = ERR_NOMEM
        return -1
    cats_map(g, o, nmap, catmap)
    for u in range(o.n_nodes):
        if o.nodes[u].cat and g.nodes[nmap[u]].cat == 0:
            g.nodes[nmap[u]].cat = <uint16_t>catmap[o.nodes[u].cat]
    # contexts and their edges
    cdef uint32_t* cmap = <uint32_t*>malloc((<size_t>o.n_ctxs + 1) * sizeof(uint32_t))
    if cmap == NULL:
        free(catmap)
        g.pool.err = ERR_NOMEM
        return -1
    ctx_find_many(g, o.ctxs, o.n_ctxs, cmap)  # o's keys are distinct: appending one cannot
                                              # change another's
    cdef int rc = _absorb_ctxs(g, o, nmap, cmap, catmap)
    free(cmap)
    free(catmap)
    return rc


cdef int _absorb_ctxs(GraphC* g, GraphC* o, uint32_t* nmap, uint32_t* cmap,
                      const uint32_t* catmap) noexcept nogil:
    cdef uint32_t c, ci, e, ei, d, sh, add, n = o.n_ctxs
    cdef uint64_t key
    for c in range(n):
        # Pipelined like ctx_find_many: the records the lists of context c+4 start from (fetched at
        # c+8: o's first edge and g's context) are followed to g's first edge and index slot.
        if c + 8 < n:
            if o.ctxs[c + 8].head != NONE:
                prefetch(&o.edges[o.ctxs[c + 8].head])
            if cmap[c + 8] != NONE:
                prefetch(&g.ctxs[cmap[c + 8]])
        if c + 4 < n and cmap[c + 4] != NONE and o.ctxs[c + 4].head != NONE:
            ci = cmap[c + 4]
            if g.ctxs[ci].distinct > 8:
                prefetch(&g.edge_ix.slots[fastrange(edge_hash(
                    ci, nmap[o.edges[o.ctxs[c + 4].head].dst]), g.edge_ix.capacity)])
            elif g.ctxs[ci].head != NONE:
                prefetch(&g.edges[g.ctxs[ci].head])
        if o.ctxs[c].head == NONE:
            continue
        key = ctx_key(&o.ctxs[c])
        ci = cmap[c]
        if is_cat_key(key):               # o's category: into the one it maps to, if any
            if (key & 0xFFFF) > o.n_cats or catmap[key & 0xFFFF] == 0:
                continue
            key = cat_key(catmap[key & 0xFFFF])
            ci = ctx_find(g, key)
        if ci == NONE:
            # a context new to g: its edges are all new too, and need no lookup
            if reserve_ctxs(g, 1) < 0 or reserve_edges(g, 1) < 0:
                return -1
            ci = append_ctx(g, key)
            e = o.ctxs[c].head
            while e != NONE:
                if reserve_edges(g, 1) < 0:
                    return -1
                ei = append_edge(g, ci, nmap[o.edges[e].dst])
                g.edges[ei].stamp = o.edges[e].stamp
                g.edges[ei].count = o.edges[e].count
                g.ctxs[ci].total += o.edges[e].count
                e = o.edges[e].next
            continue
        # the rescaling both sides need before their sums fit (none while the totals fit)
        sh = 0
        if <uint64_t>g.ctxs[ci].total + o.ctxs[c].total > 0xFFFF:
            e = o.ctxs[c].head
            while e != NONE:
                ei = _edge_in(g, ci, nmap[o.edges[e].dst])
                if ei != NONE:
                    while _ceil_shift(g.edges[ei].count, sh) + \
                            _ceil_shift(o.edges[e].count, sh) > 0xFFFF:
                        sh += 1
                e = o.edges[e].next
        if sh:
            g.ctxs[ci].total = 0
            e = g.ctxs[ci].head
            while e != NONE:
                g.edges[e].count = <uint16_t>_ceil_shift(g.edges[e].count, sh)
                g.ctxs[ci].total += g.edges[e].count
                e = g.edges[e].next
        e = o.ctxs[c].head
        while e != NONE:
            d = nmap[o.edges[e].dst]
            ei = _edge_in(g, ci, d)
            if ei == NONE:
                if reserve_edges(g, 1) < 0:
                    return -1
                ei = append_edge(g, ci, d)
                g.edges[ei].stamp = o.edges[e].stamp
            elif o.edges[e].stamp > g.edges[ei].stamp:
                g.edges[ei].stamp = o.edges[e].stamp
            add = _ceil_shift(o.edges[e].count, sh)
            g.edges[ei].count = <uint16_t>(g.edges[ei].count + add)
            g.ctxs[ci].total += add
            e = o.edges[e].next
    return 0


cdef inline uint32_t _edge_in(GraphC* g, uint32_t ci, uint32_t d) noexcept nogil:
    """edge_find for a context with few successors is a walk of its list: a failed index probe
    reads a record per occupied slot it passes, a short list fewer."""
    cdef uint32_t e
    if g.ctxs[ci].distinct > 8:
        return edge_find(g, ci, d)
    e = g.ctxs[ci].head
    while e != NONE and g.edges[e].dst != d:
        e = g.edges[e].next
    return e


cdef int absorb(GraphC* g, GraphC* o) noexcept nogil:
    """Add graph o into g (melvin.merge): patterns unified by (port, payload) with counts added,
    the higher level and the split with the shorter left part; contexts unified by key; edges
    (context, next pattern) with counts added and the later stamp. In a context where a sum would
    not fit 16 bits, both sides' counts are first rescaled (halved, rounding up) as often as
    needed. o is not changed. Returns -1 with g.pool.err set on failure: g is then consistent but
    only partly merged.
    Categories are unified by profile (cats_map); their contexts' counts add like any other's,
    and every profile is then retaken from them."""
    cdef uint32_t v
    cdef int rc
    cdef uint32_t* nmap = <uint32_t*>malloc((<size_t>o.n_nodes + 1) * sizeof(uint32_t))
    if nmap == NULL:
        g.pool.err = ERR_NOMEM
        return -1
    rc = _absorb_into(g, o, nmap)
    free(nmap)
    cats_rebuild(g)
    # whatever got merged, the derived totals stay exact
    g.total_count = 0
    for v in range(g.n_nodes):
        g.total_count += g.nodes[v].count
    while g.total_count + g.n_nodes >= 0xFFFFFF00u:
        g.total_count = 0                 # age, as training does before anything could wrap
        for v in range(g.n_nodes):
            g.nodes[v].count >>= 1
            g.total_count += g.nodes[v].count
    trie_sum_aggregates(g)
    if rc == 0:
        g.bytes_fed += o.bytes_fed
        g.tokens_fed += o.tokens_fed
        g.episodes += o.episodes
        g.formed += o.formed
        g.pruned_nodes += o.pruned_nodes
        g.pruned_edges += o.pruned_edges
        g.pruned_ctxs += o.pruned_ctxs
        g.prunes += o.prunes
    return rc
