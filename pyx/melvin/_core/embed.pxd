# Sparse embeddings and categories. A node's embedding is its successor profile: the
# embedding_dims strongest continuations of its one-token context (dims are node ids, weights the
# counts, L2-normalised), so it is learned online with the edges and costs nothing to store.
# Categories group nodes whose profiles are alike (online leader clustering, capped); each has
# a context of its own that counts its members' continuations, the back-off a rarely seen node
# borrows from. All functions are nogil; growth failures leave the graph as it was.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from melvin._core.defs cimport *
from melvin._core.store cimport GraphC


cdef enum:
    EMB_MAX = 64                   # upper bound of Limits.embedding_dims


# A node's (or category's) embedding: dims ascending, weights L2-normalised.
cdef struct EmbC:
    uint32_t n
    uint32_t dims[EMB_MAX]
    float w[EMB_MAX]


cdef inline uint64_t cat_key(uint32_t c) noexcept nogil:
    """Context key of category c (1-based, as NodeC.cat holds it): hashed like every key (the
    indexes place by the high bits), with c itself in the low 16 bits so is_cat_key can tell a
    category's context from a node's."""
    return (fmix64(<uint64_t>c ^ <uint64_t>0x43415445474f5259ULL) & ~<uint64_t>0xFFFF) | c


cdef inline bint is_cat_key(uint64_t key) noexcept nogil:
    return (key & 0xFFFF) != 0 and cat_key(<uint32_t>(key & 0xFFFF)) == key


# The embedding of the context ci's successors (a node's: its one-token context).
cdef void embed_ctx(GraphC* g, uint32_t ci, EmbC* out) noexcept nogil
cdef double emb_cosine(const EmbC* a, const EmbC* b) noexcept nogil
# Category c's profile (from its context's counts).
cdef void cat_embedding(GraphC* g, uint32_t c, EmbC* out) noexcept nogil
# Place node u (one-token context ci) in the category its profile is closest to, or a new one.
cdef void categorize(GraphC* g, uint32_t u, uint32_t ci) noexcept nogil
# Merging: o's categories (1-based) to g's (0: none), catmap sized o.n_cats + 1.
cdef void cats_map(GraphC* g, GraphC* o, const uint32_t* nmap, uint32_t* catmap) noexcept nogil
# Recompute every category's profile and the lookup chains (after pruning, loading, merging).
cdef void cats_rebuild(GraphC* g) noexcept nogil
# The lookup chains from the profiles as they are.
cdef void cats_rechain(GraphC* g) noexcept nogil
# Loading: room for n categories (`capacity`, the saved one, if at least n; else as training
# would have grown it), their profiles empty, then cats_rebuild if asked (else the caller fills
# the profiles and calls cats_rechain). -1 with g.pool.err on failure.
cdef int cats_restore(GraphC* g, uint32_t n, bint rebuild, uint32_t capacity) noexcept nogil
# Memory of the categories' table as loading sizes it (a function of the contents).
cdef uint64_t cats_bytes(GraphC* g) noexcept nogil
