# The single allocation choke point: every byte the graph owns is allocated, resized and freed here,
# after an overflow check on n*size and a check against the memory cap; `used` is the exact total.
from libc.stdint cimport int64_t

cdef enum:
    ERR_NONE = 0
    ERR_CAP = 1          # would exceed the memory cap (max_memory)
    ERR_NOMEM = 2        # the system allocator (or the fault-injection hook) failed
    ERR_OVERFLOW = 3     # n * size does not fit in size_t
    ERR_LIMIT = 4        # a count cap (max_nodes, max_edges ...) was reached

cdef struct PoolC:
    size_t used          # bytes currently allocated through this pool
    size_t peak
    size_t cap           # hard budget (Limits.max_memory)
    int64_t n_allocs     # allocation attempts so far (fault-injection clock)
    int64_t fail_at      # test hook: the attempt with this number fails with ERR_NOMEM (-1: off)
    int err              # reason of the last failure
    size_t err_request   # bytes requested by the last failure
    size_t map_lo        # [map_lo, map_hi): a private file mapping whose blocks the graph uses in
    size_t map_hi        # place (a brain loaded by mapping); never freed or realloc'ed here

# Blocks inside [map_lo, map_hi) count in `used` like allocated ones; resizing one up moves it to
# the heap and freeing one uncounts it, either giving its pages back (the mapping's owner unmaps
# the mapping itself).
# Returns NULL and sets p.err on failure; never raises.
cdef void* pool_alloc(PoolC* p, size_t n, size_t size) noexcept nogil
# Resizes *ptr from old_n to new_n items; commits (*ptr, p.used) only once the new block exists.
# Returns 0 on success, -1 with p.err set (the old block stays valid and owned) on failure.
cdef int pool_resize(PoolC* p, void** ptr, size_t old_n, size_t new_n, size_t size) noexcept nogil
cdef void pool_free(PoolC* p, void* ptr, size_t n, size_t size) noexcept nogil
