# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
from libc.stdlib cimport malloc, realloc, free
from libc.stdint cimport SIZE_MAX, int64_t
from libc.string cimport memcmp, memcpy, memset
from posix.mman cimport madvise, MADV_DONTNEED

cdef extern from "execinfo.h" nogil:
    int backtrace(void** buffer, int size)

cdef extern from "dlfcn.h" nogil:
    ctypedef struct Dl_info:
        const char* dli_fname
        void* dli_fbase
        const char* dli_sname
        void* dli_saddr
    int dladdr(const void* addr, Dl_info* info)


# Allocation-site tracing for the fault-injection tests (off by default, process-wide): a site is
# the chain of the SITE_DEPTH innermost return addresses outside this module, so `_grow` growing
# the edge table for a feed and `_grow` growing the arena for a port are different sites. The
# tests count the sites a scenario reaches and the sites whose injected failure they survived.
cdef enum:
    SITE_DEPTH = 2
    SITE_MAX = 512
    SITE_SCAN = 16

cdef bint _tracing = False
cdef void* _mem_base = NULL
cdef void* _unwinder_base = NULL      # the module backtrace() lives in (a sanitizer intercepts it)
cdef int _n_sites = 0
cdef void* _site_pc[SITE_MAX * SITE_DEPTH]
cdef int64_t _site_attempts[SITE_MAX]
cdef int64_t _site_failed[SITE_MAX]


cdef int _site_of_attempt() noexcept nogil:
    global _n_sites
    cdef void* frames[SITE_SCAN]
    cdef void* key[SITE_DEPTH]
    cdef Dl_info info
    cdef int n = backtrace(frames, SITE_SCAN)
    cdef int i, k = 0
    memset(key, 0, sizeof(key))
    for i in range(n):
        if dladdr(frames[i], &info) != 0 and (info.dli_fbase == _mem_base or
                                              info.dli_fbase == _unwinder_base):
            continue
        key[k] = frames[i]
        k += 1
        if k == SITE_DEPTH:
            break
    for i in range(_n_sites):
        if memcmp(&_site_pc[i * SITE_DEPTH], key, sizeof(key)) == 0:
            return i
    if _n_sites == SITE_MAX:
        return -1
    memcpy(&_site_pc[_n_sites * SITE_DEPTH], key, sizeof(key))
    _site_attempts[_n_sites] = 0
    _site_failed[_n_sites] = 0
    _n_sites += 1
    return _n_sites - 1


cdef inline bint _attempt(PoolC* p) noexcept nogil:
    cdef int site = -1
    p.n_allocs += 1
    if _tracing:
        site = _site_of_attempt()
        if site >= 0:
            _site_attempts[site] += 1
    if p.fail_at >= 0 and p.n_allocs == p.fail_at:
        p.err = ERR_NOMEM
        if site >= 0:
            _site_failed[site] += 1
        return False
    return True


def _site_trace(bint on):
    """Start (clearing what was recorded) or stop allocation-site tracing. Test-only."""
    global _tracing, _n_sites, _mem_base, _unwinder_base
    cdef Dl_info info
    if on:
        if dladdr(<void*>pool_alloc, &info) == 0:
            raise RuntimeError("dladdr cannot locate the mem module")
        _mem_base = info.dli_fbase
        _unwinder_base = info.dli_fbase
        if dladdr(<void*>backtrace, &info) != 0:
            _unwinder_base = info.dli_fbase
        _n_sites = 0
    _tracing = on


def _site_report():
    """Sites recorded since `_site_trace(True)`: a list of dicts with `frames` ((module file,
    offset of the return address) pairs, innermost first), `attempts` and `failed` counts."""
    cdef Dl_info info
    cdef int i, j
    cdef void* pc
    out = []
    for i in range(_n_sites):
        frames = []
        for j in range(SITE_DEPTH):
            pc = _site_pc[i * SITE_DEPTH + j]
            if pc == NULL:
                break
            if dladdr(pc, &info) != 0 and info.dli_fname != NULL:
                frames.append((info.dli_fname.decode("utf-8", "replace"),
                               <size_t>pc - <size_t>info.dli_fbase))
            else:
                frames.append(("?", <size_t>pc))
        out.append({"frames": tuple(frames), "attempts": _site_attempts[i],
                    "failed": _site_failed[i]})
    return out


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
    if _mapped(p, ptr[0]):
        fresh = ptr[0] if new_bytes <= old_bytes else _unmap_grow(ptr[0], old_bytes, new_bytes)
    else:
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


cdef inline bint _mapped(PoolC* p, void* ptr) noexcept nogil:
    return p.map_lo <= <size_t>ptr < p.map_hi


cdef void _unmap_pages(void* block, size_t nbytes) noexcept nogil:
    """Give back the whole pages of a mapped block the graph no longer uses (a private mapping's
    written pages are anonymous copies, which would otherwise stay resident until it is unmapped)."""
    cdef size_t lo = (<size_t>block + 4095) & ~<size_t>4095
    cdef size_t hi = (<size_t>block + nbytes) & ~<size_t>4095
    if hi > lo:
        madvise(<void*>lo, hi - lo, MADV_DONTNEED)


cdef void* _unmap_grow(void* old, size_t old_bytes, size_t new_bytes) noexcept nogil:
    """A mapped block grown: copied to the heap, its pages given back."""
    cdef void* fresh = malloc(new_bytes)
    if fresh == NULL:
        return NULL
    memcpy(fresh, old, old_bytes)
    _unmap_pages(old, old_bytes)
    return fresh


cdef void pool_free(PoolC* p, void* ptr, size_t n, size_t size) noexcept nogil:
    if ptr != NULL:
        if _mapped(p, ptr):
            _unmap_pages(ptr, n * size)
        else:
            free(ptr)
        p.used -= n * size
