# Shared C types, constants and hash functions of the melvin core (declaration-only, inlined everywhere).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

cdef extern from *:
    """
    #define MELVIN_NONE 0xFFFFFFFFu
    #define MELVIN_MAX_CONTEXT 32
    #define MELVIN_MAX_ORDERS (MELVIN_MAX_CONTEXT + 9)
    #define MELVIN_ATTN_WINDOW 128
    #define MELVIN_STOP 256u
    #define MELVIN_N_BASE 257u
    """
    const uint32_t NONE "MELVIN_NONE"            # "no id" sentinel for every id space
    const int MAX_CONTEXT "MELVIN_MAX_CONTEXT"   # upper bound of Limits.context_len
    const int MAX_ORDERS "MELVIN_MAX_ORDERS"     # contexts of one prediction: 8 byte, the token
                                                 # contexts and a category
    const int ATTN_WINDOW "MELVIN_ATTN_WINDOW"   # tokens of the episode the attention heads see (2^k)
    const uint32_t STOP "MELVIN_STOP"            # node id of the end-of-episode node
    const uint32_t N_BASE "MELVIN_N_BASE"        # 256 text byte nodes + STOP exist from the start

cdef extern from *:
    """
    static inline uint64_t melvin_fastrange(uint64_t h, uint64_t n) {
        return (uint64_t)(((__uint128_t)h * n) >> 64);
    }
    """
    # Maps a 64-bit hash onto [0, n) without a power-of-two size, so indexes can grow by 1.5x.
    uint64_t fastrange "melvin_fastrange"(uint64_t h, uint64_t n) noexcept nogil
    # Hash probes are cache misses; issuing several before using any overlaps them.
    void prefetch "__builtin_prefetch"(const void* p) noexcept nogil


# A pattern: payload bytes live in the arena; ids are dense indices into GraphC.nodes.
cdef struct NodeC:
    uint64_t poly          # polynomial hash of the payload (composable: poly(a+b) from poly(a), poly(b))
    uint64_t key           # stable 64-bit identity of (port, payload); contexts are keyed by it
    uint32_t payload_off
    uint16_t payload_len
    uint8_t level          # 0: a single byte (or STOP); n: formed from two nodes of level < n
    uint8_t port
    uint32_t left          # components of a hierarchy node (NONE for bytes, or once pruned)
    uint32_t right
    uint32_t count         # times emitted as a token (aged by pruning)
    uint32_t aux           # scratch for rebuilds (new id during pruning); meaningless otherwise
    uint32_t state         # trie state where the payload ends (NONE for STOP)
    uint8_t first          # first payload byte (0 if empty): lets exclusion reject most tokens
                           # without a trie probe (fits in the struct's padding)
    uint16_t cat           # category (1-based; 0: none), see embed.pxd (also in the padding)


# A context: the last k tokens, hashed. Its successors are a singly linked list of edges.
# The key is split in two halves so the struct packs into 20 bytes (contexts are ~half as many as
# edges, so every byte here counts).
cdef struct CtxC:
    uint32_t key_lo
    uint32_t key_hi
    uint32_t head          # first edge of the successor list (NONE if empty)
    uint32_t total         # sum of the successor counts
    uint32_t distinct      # number of successors


# A Hebbian edge: context -> next token.
cdef struct EdgeC:
    uint32_t ctx
    uint32_t dst
    uint32_t next          # next edge of the same context (NONE ends the list)
    uint16_t count
    uint16_t stamp         # coarse time of last use (tokens learned >> 16)


# A payload-trie state; children are found through the trie index, keyed by the state's whole
# prefix (trie_key), so a walk along known bytes can ask for every depth's slot at once.
cdef struct TrieC:
    uint32_t agg           # sum of (count + 1) over the nodes at or below this state (counts are
                           # aged before total_count + nodes can reach 2**32, so it cannot wrap)
    uint32_t parent
    uint32_t node          # node whose payload ends here (NONE if none)
    uint32_t first_child   # children as a linked list, to enumerate what extends a prefix
    uint32_t next_sibling
    uint32_t hash          # trie_roll over the prefix from the port's root (whose hash names the port)
    uint8_t byte           # the last byte of the prefix (a root: its port)
    uint8_t branching      # two or more children: the walk asks the index instead of reading the
                           # first child, which is the right one only ~5% of the time there


# A category (embed.pxd); its profile lives in GraphC.cat_dims/cat_w at index * emb_dims.
cdef struct CatC:
    uint32_t top           # the profile's strongest dim (its lookup chain), NONE if empty
    uint32_t next          # next category in the same chain
    uint32_t n             # non-zeros of the profile
    uint32_t refreshed     # the category context's total when the profile was taken


# Open-addressing index of dense-array positions. Slots hold position+1 (0 = empty); keys live in the
# dense arrays, so a slot costs 4 bytes. Any capacity (fastrange), load 0.5-0.75, linear probing, no
# deletions: removal happens only by rebuilding.
cdef struct IndexC:
    uint32_t* slots
    uint64_t capacity
    uint64_t filled
    uint32_t mask          # ix_mask(capacity) (store.pxd), set with it by ix_set_capacity: lookups
                           # would otherwise recompute it ~18 times a learned token


cdef inline uint64_t ctx_key(CtxC* c) noexcept nogil:
    return (<uint64_t>c.key_hi << 32) | c.key_lo


cdef inline uint64_t fmix64(uint64_t k) noexcept nogil:
    k ^= k >> 33
    k *= <uint64_t>0xff51afd7ed558ccdULL
    k ^= k >> 33
    k *= <uint64_t>0xc4ceb9fe1a85ec53ULL
    k ^= k >> 33
    return k


cdef inline uint64_t POLY_BASE() noexcept nogil:
    return <uint64_t>0x100000001b3ULL


cdef inline uint64_t poly_pow(uint32_t n) noexcept nogil:
    cdef uint64_t result = 1
    cdef uint64_t b = POLY_BASE()
    while n:
        if n & 1:
            result *= b
        b *= b
        n >>= 1
    return result


cdef inline uint64_t poly_bytes(const uint8_t* data, size_t n) noexcept nogil:
    cdef uint64_t h = 0
    cdef size_t i
    for i in range(n):
        h = h * POLY_BASE() + <uint64_t>data[i] + 1
    return h


cdef inline uint64_t node_key(uint64_t poly, uint8_t port, uint32_t length) noexcept nogil:
    return fmix64(poly ^ fmix64((<uint64_t>port << 32) + length + <uint64_t>0x9e3779b97f4a7c15ULL))


cdef inline uint64_t MARKER_POLY() noexcept nogil:
    # Port markers have no payload; this stands in for its hash so their keys differ from STOP's.
    return <uint64_t>0x4d41524b45520001ULL


cdef inline uint64_t ctx_key_first(uint64_t token_key) noexcept nogil:
    return fmix64(token_key ^ <uint64_t>0x2545f4914f6cdd1dULL)


cdef inline uint64_t ctx_key_extend(uint64_t shorter, uint64_t token_key) noexcept nogil:
    return fmix64(shorter * POLY_BASE() ^ token_key)


cdef inline uint64_t edge_hash(uint32_t ctx, uint32_t dst) noexcept nogil:
    return fmix64((<uint64_t>ctx << 32) | dst)


cdef inline uint32_t trie_root_hash(uint8_t port) noexcept nogil:
    return (port + 1u) * 0x9e3779b9u


cdef inline uint32_t trie_roll(uint32_t h, uint8_t byte) noexcept nogil:
    """The hash of a prefix extended by one byte. 32 bits: equal hashes cost a probe, not a wrong
    answer (lookups check the state's parent and byte)."""
    return h * 0x01000193u + byte + 1u


cdef inline uint64_t trie_key(uint32_t h) noexcept nogil:
    """Index key of the trie state whose prefix hash is h."""
    return fmix64(h ^ <uint64_t>0x6a09e667f3bcc909ULL)


cdef inline uint64_t ctx_key_from_poly(uint64_t h, uint32_t n, bint from_start) noexcept nogil:
    """Key of a byte-suffix context from poly_bytes of its n bytes."""
    return fmix64(h ^ (<uint64_t>n << 56) ^ (<uint64_t>from_start << 55) ^ <uint64_t>0x3c6ef372fe94f82bULL)


cdef inline uint64_t ctx_key_bytes(const uint8_t* tail, uint32_t n, bint from_start) noexcept nogil:
    """Key of a byte-suffix context (the last n bytes; from_start when the episode began there)."""
    return ctx_key_from_poly(poly_bytes(tail, n), n, from_start)
