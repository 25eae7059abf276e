# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
from libc.math cimport sqrt
from libc.string cimport memcpy, memset
from melvin._core.mem cimport pool_alloc, pool_free, ERR_NONE
from melvin._core.store cimport ctx_find, cats_free

# Leader clustering: a node joins the closest category whose profile has a cosine of at least
# CAT_JOIN with its own, else starts one (while under Limits.max_categories). Candidates are the
# categories whose strongest dim is one of the node's CAT_PROBE strongest, at most CAT_CHAIN per
# chain, so placing a node costs O(embedding_dims) comparisons of O(embedding_dims) each.
cdef double CAT_JOIN = 0.2
cdef uint32_t CAT_PROBE = 2
cdef uint32_t CAT_CHAIN = 8
# A category's profile is retaken from its context's counts each time they double.
cdef uint32_t CAT_REFRESH_MIN = 16


def _set_categories(double join, uint32_t probe, uint32_t chain):
    """Tuning hook; returns the previous values."""
    global CAT_JOIN, CAT_PROBE, CAT_CHAIN
    old = (CAT_JOIN, CAT_PROBE, CAT_CHAIN)
    CAT_JOIN, CAT_PROBE, CAT_CHAIN = join, max(1, probe), max(1, chain)
    return old


cdef void embed_ctx(GraphC* g, uint32_t ci, EmbC* out) noexcept nogil:
    """The emb_dims strongest successors of context ci (ties to the lower id, so it depends on the
    counts only), weights their counts, L2-normalised, dims ascending."""
    cdef uint32_t cnt[EMB_MAX]
    cdef uint32_t k = g.emb_dims if g.emb_dims <= EMB_MAX else EMB_MAX
    cdef uint32_t n = 0, e, c, d, i
    cdef double norm = 0.0
    out.n = 0
    if ci == NONE or k == 0:
        return
    e = g.ctxs[ci].head
    while e != NONE:
        c = g.edges[e].count
        d = g.edges[e].dst
        e = g.edges[e].next
        if n == k:
            if c < cnt[n - 1] or (c == cnt[n - 1] and d > out.dims[n - 1]):
                continue
            n -= 1                        # the weakest makes room
        i = n
        while i > 0 and (cnt[i - 1] < c or (cnt[i - 1] == c and out.dims[i - 1] > d)):
            cnt[i] = cnt[i - 1]
            out.dims[i] = out.dims[i - 1]
            i -= 1
        cnt[i] = c
        out.dims[i] = d
        n += 1
    for i in range(n):
        norm += <double>cnt[i] * cnt[i]
    norm = sqrt(norm) if norm > 0 else 1.0
    for i in range(n):
        out.w[i] = <float>(cnt[i] / norm)
    out.n = n
    _sort_dims(out)


cdef void _sort_dims(EmbC* e) noexcept nogil:
    """Dims ascending (insertion sort: at most EMB_MAX), for merge-style cosines."""
    cdef uint32_t i, k, td
    cdef float tw
    for i in range(1, e.n):
        td = e.dims[i]
        tw = e.w[i]
        k = i
        while k > 0 and e.dims[k - 1] > td:
            e.dims[k] = e.dims[k - 1]
            e.w[k] = e.w[k - 1]
            k -= 1
        e.dims[k] = td
        e.w[k] = tw


cdef double emb_cosine(const EmbC* a, const EmbC* b) noexcept nogil:
    cdef uint32_t i = 0, j = 0
    cdef double s = 0.0
    while i < a.n and j < b.n:
        if a.dims[i] == b.dims[j]:
            s += <double>a.w[i] * b.w[j]
            i += 1
            j += 1
        elif a.dims[i] < b.dims[j]:
            i += 1
        else:
            j += 1
    return s


cdef void cat_embedding(GraphC* g, uint32_t c, EmbC* out) noexcept nogil:
    cdef uint32_t idx = c - 1, n = g.cats[idx].n
    memcpy(out.dims, g.cat_dims + <uint64_t>idx * g.emb_dims, n * sizeof(uint32_t))
    memcpy(out.w, g.cat_w + <uint64_t>idx * g.emb_dims, n * sizeof(float))
    out.n = n


cdef inline uint32_t _bucket(GraphC* g, uint32_t dim) noexcept nogil:
    return <uint32_t>fastrange(fmix64(dim), 2 * <uint64_t>g.cap_cats)


cdef uint32_t _strongest(const EmbC* e) noexcept nogil:
    cdef uint32_t i, best = NONE
    cdef float bw = -1.0
    for i in range(e.n):
        if e.w[i] > bw:
            bw = e.w[i]
            best = e.dims[i]
    return best


cdef void _chain_add(GraphC* g, uint32_t idx) noexcept nogil:
    """Chains are kept newest (highest index) first, whatever order categories joined them in, so
    a graph whose chains were rebuilt on loading searches them as the live one did (CAT_CHAIN
    cuts the search short: resumed training must make the same choices)."""
    cdef uint32_t b, at
    g.cats[idx].next = NONE
    if g.cats[idx].top == NONE:
        return
    b = _bucket(g, g.cats[idx].top)
    if g.cat_head[b] == NONE or g.cat_head[b] < idx:
        g.cats[idx].next = g.cat_head[b]
        g.cat_head[b] = idx
        return
    at = g.cat_head[b]
    while g.cats[at].next != NONE and g.cats[at].next > idx:
        at = g.cats[at].next
    g.cats[idx].next = g.cats[at].next
    g.cats[at].next = idx


cdef void _chain_remove(GraphC* g, uint32_t idx) noexcept nogil:
    cdef uint32_t b, at
    if g.cats[idx].top == NONE:
        return
    b = _bucket(g, g.cats[idx].top)
    if g.cat_head[b] == idx:
        g.cat_head[b] = g.cats[idx].next
        return
    at = g.cat_head[b]
    while at != NONE and g.cats[at].next != idx:
        at = g.cats[at].next
    if at != NONE:
        g.cats[at].next = g.cats[idx].next


cdef void _cat_store(GraphC* g, uint32_t idx, const EmbC* e, uint32_t total) noexcept nogil:
    """Set category idx's profile (and its chain)."""
    _chain_remove(g, idx)
    memcpy(g.cat_dims + <uint64_t>idx * g.emb_dims, e.dims, e.n * sizeof(uint32_t))
    memcpy(g.cat_w + <uint64_t>idx * g.emb_dims, e.w, e.n * sizeof(float))
    g.cats[idx].n = e.n
    g.cats[idx].top = _strongest(e)
    g.cats[idx].refreshed = total
    _chain_add(g, idx)


cdef void cats_rechain(GraphC* g) noexcept nogil:
    cdef uint32_t i
    for i in range(2 * g.cap_cats):
        g.cat_head[i] = NONE
    for i in range(g.n_cats):
        _chain_add(g, i)


cdef int _cats_grow(GraphC* g, uint64_t cap) noexcept nogil:
    """Room for `cap` categories: all four arrays or none (-1 with g.pool.err)."""
    cdef uint64_t d = g.emb_dims
    cdef CatC* cats
    cdef uint32_t* dims
    cdef float* w
    cdef uint32_t* head
    cats = <CatC*>pool_alloc(&g.pool, cap, sizeof(CatC))
    dims = <uint32_t*>pool_alloc(&g.pool, cap * d, sizeof(uint32_t)) if cats != NULL else NULL
    w = <float*>pool_alloc(&g.pool, cap * d, sizeof(float)) if dims != NULL else NULL
    head = <uint32_t*>pool_alloc(&g.pool, 2 * cap, sizeof(uint32_t)) if w != NULL else NULL
    if head == NULL:
        pool_free(&g.pool, w, cap * d, sizeof(float))
        pool_free(&g.pool, dims, cap * d, sizeof(uint32_t))
        pool_free(&g.pool, cats, cap, sizeof(CatC))
        return -1
    if g.n_cats:
        memcpy(cats, g.cats, g.n_cats * sizeof(CatC))
        memcpy(dims, g.cat_dims, g.n_cats * d * sizeof(uint32_t))
        memcpy(w, g.cat_w, g.n_cats * d * sizeof(float))
    cats_free(g)
    g.cats = cats
    g.cat_dims = dims
    g.cat_w = w
    g.cat_head = head
    g.cap_cats = <uint32_t>cap
    cats_rechain(g)
    return 0


cdef uint32_t _place(GraphC* g, EmbC* e, uint32_t prefer) noexcept nogil:
    """The category (index) for a profile: the closest with a cosine of at least CAT_JOIN
    (`prefer` first if its profile is the same), else a new one, else (at the cap, or under the
    memory cap: categories are optional, like pattern formation) the closest found, else NONE."""
    cdef EmbC ce
    cdef uint32_t probe[EMB_MAX]
    cdef uint32_t n_probe = 0, i, j, idx, steps, best = NONE
    cdef double s, best_s = -1.0
    if prefer < g.n_cats:
        cat_embedding(g, prefer + 1, &ce)
        if emb_cosine(e, &ce) >= 0.999:
            return prefer
    # the CAT_PROBE strongest dims (ties: the lower dim)
    while n_probe < CAT_PROBE and n_probe < e.n:
        best = NONE
        for i in range(e.n):
            for j in range(n_probe):
                if probe[j] == i:
                    break
            else:
                if best == NONE or e.w[i] > e.w[best]:
                    best = i
        probe[n_probe] = best
        n_probe += 1
    best = NONE
    if g.cap_cats:
        for i in range(n_probe):
            idx = g.cat_head[_bucket(g, e.dims[probe[i]])]
            steps = 0
            while idx != NONE and steps < CAT_CHAIN:
                if g.cats[idx].top == e.dims[probe[i]]:
                    cat_embedding(g, idx + 1, &ce)
                    s = emb_cosine(e, &ce)
                    if s > best_s or (s == best_s and idx < best):
                        best_s = s
                        best = idx
                idx = g.cats[idx].next
                steps += 1
    if best != NONE and best_s >= CAT_JOIN:
        return best
    if g.n_cats < _max_cats(g) and g.n_cats == g.cap_cats and \
            _cats_grow(g, _capacity_for(g, g.n_cats + 1)) < 0:
        g.pool.err = ERR_NONE
    if g.n_cats < g.cap_cats and g.n_cats < g.max_cats:
        best = g.n_cats
        g.n_cats += 1
        g.cats[best].top = NONE
        _cat_store(g, best, e, 0)
    return best


cdef void categorize(GraphC* g, uint32_t u, uint32_t ci) noexcept nogil:
    cdef EmbC e, ce
    cdef uint32_t best, cci
    if g.max_cats == 0:
        return
    embed_ctx(g, ci, &e)
    if e.n == 0:
        return
    best = _place(g, &e, NONE)
    if best == NONE:
        return
    g.nodes[u].cat = <uint16_t>(best + 1)
    cci = ctx_find(g, cat_key(best + 1))
    if cci != NONE and g.ctxs[cci].total >= CAT_REFRESH_MIN and \
            g.ctxs[cci].total >= 2 * <uint64_t>g.cats[best].refreshed:
        embed_ctx(g, cci, &ce)
        if ce.n:
            _cat_store(g, best, &ce, g.ctxs[cci].total)


cdef void cats_map(GraphC* g, GraphC* o, const uint32_t* nmap, uint32_t* catmap) noexcept nogil:
    """Merging: catmap[c] = g's category (1-based, 0: none) for o's category c (1-based), by
    profile (o's dims mapped to g's nodes by nmap): the same category where the profiles agree
    (a graph merged with its own copy keeps its numbering), else as a node is placed."""
    cdef EmbC e
    cdef uint32_t c, j, idx
    catmap[0] = 0
    for c in range(o.n_cats):
        catmap[c + 1] = 0
        if g.max_cats == 0:
            continue
        e.n = 0
        for j in range(o.cats[c].n):
            if e.n < g.emb_dims:
                e.dims[e.n] = nmap[o.cat_dims[<uint64_t>c * o.emb_dims + j]]
                e.w[e.n] = o.cat_w[<uint64_t>c * o.emb_dims + j]
                e.n += 1
        _sort_dims(&e)                      # g's ids may order them differently
        if e.n == 0:
            continue
        idx = _place(g, &e, c)
        if idx != NONE:
            catmap[c + 1] = idx + 1


cdef void cats_rebuild(GraphC* g) noexcept nogil:
    """Node ids moved or counts changed wholesale: every profile is retaken from its category's
    context (emptied if that context is gone: the category is then found again only once its
    members' continuations rebuild it)."""
    cdef uint32_t i, cci
    cdef EmbC e
    for i in range(g.n_cats):
        cci = ctx_find(g, cat_key(i + 1))
        embed_ctx(g, cci, &e)
        g.cats[i].n = e.n
        memcpy(g.cat_dims + <uint64_t>i * g.emb_dims, e.dims, e.n * sizeof(uint32_t))
        memcpy(g.cat_w + <uint64_t>i * g.emb_dims, e.w, e.n * sizeof(float))
        g.cats[i].top = _strongest(&e) if e.n else NONE
        g.cats[i].refreshed = g.ctxs[cci].total if cci != NONE else 0
    if g.cap_cats:
        cats_rechain(g)


cdef inline uint64_t _cat_bytes(GraphC* g) noexcept nogil:
    return sizeof(CatC) + g.emb_dims * (sizeof(uint32_t) + sizeof(float)) + 2 * sizeof(uint32_t)


cdef uint32_t _max_cats(GraphC* g) noexcept nogil:
    """max_categories, or fewer under a small budget: the table is not pruned, so it may take at
    most 1/16 of max_memory (at 80K, 256 categories took a quarter of it, and what a feed after
    a failure had learned was pruned away again at once)."""
    cdef uint64_t fit = g.pool.cap // 16 // _cat_bytes(g)
    return <uint32_t>fit if fit < g.max_cats else g.max_cats


cdef uint64_t _capacity_for(GraphC* g, uint32_t n) noexcept nogil:
    """The table's capacity while it holds n categories: training grows it 8, 16, ... up to
    max_categories, and a loaded graph gets the same (so its memory_bytes match)."""
    cdef uint64_t cap = 8
    cdef uint32_t most = _max_cats(g)
    while cap < n:
        cap *= 2
    if cap > most:
        cap = most if most >= n else n
    return cap


cdef int cats_restore(GraphC* g, uint32_t n, bint rebuild, uint32_t capacity) noexcept nogil:
    if capacity < n:
        capacity = <uint32_t>_capacity_for(g, n)
    if capacity > g.cap_cats and _cats_grow(g, capacity) < 0:
        return -1
    g.n_cats = n
    if rebuild:
        cats_rebuild(g)
    return 0


cdef uint64_t cats_bytes(GraphC* g) noexcept nogil:
    """What the categories' table takes for the categories there are (loading allocates this)."""
    if g.n_cats == 0 or g.max_cats == 0:
        return 0
    return _capacity_for(g, g.n_cats) * _cat_bytes(g)
