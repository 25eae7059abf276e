# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
from libc.stdlib cimport malloc, realloc, free
from libc.stdint cimport SIZE_MAX


cdef inline bint _attempt(PoolC* p) noexcept nogil:
    p.n_allocs += 1
    if p.fail_at >= 0 and p.n_allocs == p.fail_at:
        p.err = ERR_NOMEM
        return False
    return True


cdef void* pool_alloc(PoolC* p, size_t n, size_t size) noexcept nogil:
    cdef size_t nbytes
    cdef void* ptr
    if size != 0 and n > SIZE_MAX // size:
        p.err = ERR_OVERFLOW
        return NULL
    nbytes = n * size
    if p.used > p.cap or nbytes > p.cap - p.used:
        p.err = ERR_CAP
        p.err_request = nbytes
        return NULL
    if not _attempt(p):
        p.err_request = nbytes
        return NULL
    ptr = malloc(nbytes if nbytes else 1)
    if ptr == NULL:
        p.err = ERR_NOMEM
        p.err_request = nbytes
        return NULL
    p.used += nbytes
    if p.used > p.peak:
        p.peak = p.used
    return ptr


cdef int pool_resize(PoolC* p, void** ptr, size_t old_n, size_t new_n, size_t size) noexcept nogil:
    cdef size_t old_bytes, new_bytes
    cdef void* fresh
    if size != 0 and (new_n > SIZE_MAX // size or old_n > SIZE_MAX // size):
        p.err = ERR_OVERFLOW
        return -1
    old_bytes = old_n * size
    new_bytes = new_n * size
    if new_bytes > old_bytes and (p.used > p.cap or new_bytes - old_bytes > p.cap - p.used):
        p.err = ERR_CAP
        p.err_request = new_bytes - old_bytes
        return -1
    # Shrinking is how failed operations give memory back: it is not a fault-injection point.
    if new_bytes > old_bytes and not _attempt(p):
        p.err_request = new_bytes
        return -1
    fresh = realloc(ptr[0], new_bytes if new_bytes else 1)
    if fresh == NULL:
        p.err = ERR_NOMEM
        p.err_request = new_bytes
        return -1
    ptr[0] = fresh
    p.used = p.used - old_bytes + new_bytes
    if p.used > p.peak:
        p.peak = p.used
    return 0


cdef void pool_free(PoolC* p, void* ptr, size_t n, size_t size) noexcept nogil:
    if ptr != NULL:
        free(ptr)
        p.used -= n * size
