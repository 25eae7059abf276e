# Learning, prediction and pruning over the store. All functions are nogil and report failure by
# returning -1 with g.pool.err set; the graph is consistent at every failure point.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from melvin._core.defs cimport *
from melvin._core.store cimport GraphC


# The context trace: the last context_len tokens of the current episode, most recent first, and
# its last ATTN_WINDOW tokens in order (a ring: token i of the episode at seen[i % ATTN_WINDOW]).
cdef struct TraceC:
    uint32_t ids[MAX_CONTEXT]
    uint32_t n
    uint32_t pending               # token being learned; protected and remapped by pruning
    uint32_t n_seen                # tokens pushed since the episode began
    uint32_t seen[ATTN_WINDOW]
    uint8_t kinds[MAX_ORDERS] # smoothing kind of each context trace_contexts found (KIND_*)
    # Learning runs two steps ahead of its misses. n_next keys are the next step's contexts
    # (their index slots fetched a step ago); n_spec keys those of the step after, if the next
    # token is spec_for (a guess: formation during this step can change it); primed_for is the
    # token for which the next step's context records and edges were prefetched. Any other push
    # or a reset clears them (n_* = 0, NONE).
    uint32_t n_next
    uint32_t n_spec
    uint32_t spec_for
    uint32_t primed_for
    uint64_t next_keys[MAX_ORDERS]
    uint64_t spec_keys[MAX_ORDERS]


cdef void trace_reset(TraceC* t) noexcept nogil
cdef void trace_push(TraceC* t, uint32_t v, uint32_t context_len) noexcept nogil
# Context index of every order (NONE where unseen), their kinds in t.kinds; returns the number of
# orders.
cdef uint32_t trace_contexts(GraphC* g, TraceC* t, uint32_t* cis) noexcept nogil

cdef int graph_init(GraphC* g) noexcept nogil
cdef int add_port(GraphC* g, uint8_t port) noexcept nogil
# Add graph o into g (melvin.merge's semantics); -1 with g.pool.err, g consistent, partly merged.
cdef int absorb(GraphC* g, GraphC* o) noexcept nogil
# Learn one episode with tr reset (or prepared by the previous call); with next_tr, prepares that
# for the episode next_data on the same port (prefetches and a guess only: what is learned is the
# same).
cdef int feed_traced(GraphC* g, TraceC* tr, const uint8_t* data, size_t n, uint8_t port,
                     const uint8_t* next_data, size_t next_n, TraceC* next_tr) noexcept nogil
cdef int feed_bridge(GraphC* g, const uint8_t* a, size_t na, uint8_t pa,
                     const uint8_t* b, size_t nb, uint8_t pb) noexcept nogil
# Interpolation parameters: d (discount) and a (strength), separately for deterministic contexts
# (one successor so far) and the rest.
cdef struct SmoothC:
    double discount
    double strength
    double det_discount
    double det_strength

# Scoring's parameters depend on the kind of context (see model.pyx).
cdef enum:
    KIND_SHORT = 0                 # byte contexts of up to 3 bytes
    KIND_MID = 1                   # byte contexts of 4 to 11 bytes
    KIND_LONG = 2                  # byte contexts of 12 bytes and more
    KIND_TOKEN = 3                 # token contexts
    KIND_CAT = 4                   # the previous token's category
    N_KINDS = 5

cdef SmoothC SMOOTH_SCORE[N_KINDS]  # calibrated probabilities: predict, score
cdef SmoothC SMOOTH_RECALL      # greedy generation: trusts memorised (deterministic) contexts more
cdef SmoothC SMOOTH_BYTES[N_KINDS]  # predict and score without hierarchy (one-byte tokens)
# The scoring parameters for this graph, by kind: SMOOTH_BYTES without hierarchy, else
# SMOOTH_SCORE.
cdef SmoothC* score_smoothing(GraphC* g) noexcept nogil

cdef double prob_of(GraphC* g, uint32_t* cis, uint32_t n, uint32_t v, SmoothC* sm) noexcept nogil
cdef bint is_excluded(GraphC* g, uint32_t a, uint32_t u) noexcept nogil
# Generation's candidates and greedy choice (see model.pyx), in scratch the caller owns (zeroed
# to start; recall_free releases it).
cdef struct RecallC:
    double* p                      # by node id: the candidate's probability (where mark is set)
    uint32_t* ids                  # the candidates, in the order met
    uint8_t* mark
    uint32_t n
    uint32_t cap                   # node ids the arrays cover
    double* mass                   # by trie state: the candidates at or below it (recall_best)
    uint32_t* states               # the states weighed
    uint8_t* state_mark
    uint32_t n_states
    uint32_t cap_states
cdef int recall_gather(GraphC* g, RecallC* rc, uint32_t* cis, uint32_t m,
                       uint8_t port) noexcept nogil
cdef uint32_t recall_best(GraphC* g, RecallC* rc, uint8_t port, double* prob) noexcept nogil
cdef void recall_free(RecallC* rc) noexcept nogil
cdef double prob_next(GraphC* g, TraceC* tr, uint32_t* cis, uint32_t m, uint32_t v) noexcept nogil
# The tokens the attention heads may predict (the window, NONE where ruled out); how many (0 when
# the heads are off). prob_attended is prob_next with them gathered once for many tokens.
cdef uint32_t attn_values(GraphC* g, TraceC* tr, uint32_t* vals) noexcept nogil
cdef double prob_attended(GraphC* g, TraceC* tr, uint32_t* cis, uint32_t m, uint32_t* vals,
                          uint32_t n, uint32_t v) noexcept nogil
# prob_next's distribution one byte at a time: after the prefix pfx, out[x] for each next byte and
# out[256] for the token ending there (see model.pyx); -1 if no token continues pfx.
cdef int spell_step(GraphC* g, uint32_t a, uint32_t* cis, const uint8_t* kinds, uint32_t m,
                    uint8_t port, const uint8_t* pfx, uint32_t len_p, double* out) noexcept nogil
# A freshly loaded graph: queries may sort its busy contexts at once (see _excl_get).
cdef void excl_settled(GraphC* g) noexcept nogil
cdef double score_episode(GraphC* g, const uint8_t* data, size_t n, uint8_t port) noexcept nogil
cdef int prune_to(GraphC* g, size_t target_bytes, uint64_t target_edges, TraceC* protect) noexcept nogil
# Merging: drop least recently used singletons until the compactly rebuilt graph would fit.
cdef void compact_caps(GraphC* g, uint64_t* caps) noexcept nogil
cdef uint64_t compact_bytes(GraphC* g) noexcept nogil
cdef int trim_to(GraphC* g, uint64_t target_bytes, uint64_t target_edges) noexcept nogil
