"""Fault injection through the allocation choke point: `_core._set_fail_at(k)` makes allocation
attempt k (counted from the call) fail. Every k of a real scenario is tried; each failure must
surface as MemoryError and leave a consistent, usable graph."""
import os
import shutil
import subprocess
from contextlib import contextmanager

import pytest

import melvin
import importlib
from melvin import persist
from melvin._core import mem

merge_mod = importlib.import_module("melvin.merge")

N_LINES = 12


@pytest.fixture(scope="module")
def lines(wiki_lines):
    return wiki_lines[:N_LINES]


def _attempts_of(fn, core):
    before = core._alloc_attempts
    fn()
    return core._alloc_attempts - before


def _clean_run(lines, limits=None):
    g = melvin.Graph(limits)
    n = _attempts_of(lambda: [g.feed(x) for x in lines], g._core)
    return g, n


def _still_works(g):
    g._core._set_fail_at(-1)
    g.check()
    for _ in range(3):
        g.feed(b"recovery works")
    g.check()
    assert g.generate(b"recovery") == b" works"


def _sweep_feeds(lines, limits=None, strict_memory=False):
    """Yield (k, outcome) for every k until a run completes exactly like the clean run."""
    reference, n_attempts = _clean_run(lines, limits)
    assert reference.stats()["hierarchy_nodes"] > 0
    raised = 0
    problems = []
    for k in range(1, n_attempts + 2):
        g = melvin.Graph(limits)
        g._core._set_fail_at(k)
        failed_at = None
        for i, line in enumerate(lines):
            before = g.stats()
            try:
                g.feed(line)
            except MemoryError as exc:
                failed_at = i
                raised += 1
                assert isinstance(exc, MemoryError)
                after = g.stats()
                g.check()
                assert after["memory_bytes"] <= g.limits.max_memory
                if strict_memory and after["memory_bytes"] != before["memory_bytes"]:
                    problems.append((k, i, before["memory_bytes"], after["memory_bytes"],
                                     after["tokens_fed"] - before["tokens_fed"]))
                _still_works(g)
                break
        if failed_at is None:
            g.check()      # the injected failure was absorbed (optional growth): still consistent
            if k == n_attempts + 1:
                assert g.stats() == reference.stats()
                assert g.generate(b"The ") == reference.generate(b"The ")
    assert raised > 0
    return raised, problems


def test_feed_fault_sweep(lines):
    raised, _ = _sweep_feeds(lines)
    assert raised >= 10


# At the cap, growth is cut to what the budget still allows (_grow's second allocation): which
# table reaches that branch depends on the budget and the struct sizes, so several are swept.
SMALL_BUDGETS = ("80K", "88K", "96K", "128K", "192K")


@pytest.mark.parametrize("budget", SMALL_BUDGETS)
def test_feed_fault_sweep_small_budget(wiki_lines, budget):
    """Faults while training at the memory cap, where feeding prunes (faults hit pruning too)."""
    lim = melvin.Limits(max_memory=budget)
    lines = wiki_lines[:40]
    ref, _ = _clean_run(lines, lim)
    assert ref.stats()["prunes"] > 0
    _sweep_feeds(lines, lim)


def test_failed_feed_leaves_memory_unchanged(lines):
    """A feed is not all-or-nothing: tokens learned before the failing step stay learned (a
    100 MB episode cannot be undone cheaply). The failing step itself leaves no trace: a failure
    before any token was learned leaves memory_bytes exactly as before, and every failure leaves
    the pool accounting exact (check() compares it with the tables)."""
    _, problems = _sweep_feeds(lines, strict_memory=True)
    assert problems, "the sweep should include failures after some tokens were learned"
    no_token = [p for p in problems if p[4] == 0]
    assert not no_token, (
        f"{len(no_token)} failures that learned no token changed memory_bytes: {no_token[:5]}")


def test_fault_on_new_port(lines):
    g = melvin.Graph()
    for line in lines[:3]:
        g.feed(line)
    initial_ports = g.stats()["ports"]
    for k in range(1, 20):
        before = g.stats()
        g._core._set_fail_at(k)
        try:
            g.feed(b"\x01\x02\x03", port=5)
        except MemoryError:
            g.check()
            after = g.stats()
            if after["ports"] == before["ports"]:
                # adding the port failed: it must leave no trace
                assert after["memory_bytes"] == before["memory_bytes"]
                assert after["nodes"] == before["nodes"]
            else:
                # the port was added whole; a later step of the episode failed
                assert after["nodes"] >= before["nodes"] + 256
            continue
        finally:
            g._core._set_fail_at(-1)
        g.check()
        assert g.stats()["ports"] == initial_ports + 1
        break
    else:
        pytest.fail("adding a port never succeeded")
    _still_works(g)


def test_prune_under_faults(wiki_lines):
    for k in range(1, 12):
        g = melvin.Graph()
        for line in wiki_lines[:60]:
            g.feed(line)
        before = g.stats()["memory_bytes"]
        g._core._set_fail_at(k)
        g.prune(before // 2)            # shrinking is best effort; it must never fail or break
        g.check()
        assert g.stats()["memory_bytes"] < before
        _still_works(g)


@contextmanager
def _cores_fail_at(module, k, which=0):
    """Make allocation attempt k of the `which`-th Core that `module` creates fail."""
    real = module.Core
    made = []

    def make(**kwargs):
        core = real(**kwargs)
        if len(made) == which:
            core._set_fail_at(k)
        made.append(core)
        return core

    module.Core = make
    try:
        yield made
    finally:
        module.Core = real


def _load_with_fault(buf, k):
    with _cores_fail_at(persist, k):
        return persist.loads(buf)


def test_load_fault_sweep(lines):
    g = melvin.Graph()
    for line in lines:
        g.feed(line)
    buf = persist.dumps(g)
    assert persist.dumps(g) == buf          # dumps allocates nothing in the pool: nothing to fail
    clean = persist.loads(buf)
    n_load = clean._core._alloc_attempts
    assert n_load > 0
    wrong = []
    for k in range(1, n_load + 2):
        try:
            g2 = _load_with_fault(buf, k)
        except MemoryError:
            continue
        except melvin.CorruptBrainError as exc:
            wrong.append((k, str(exc)))     # a valid file reported as corrupt
            continue
        assert k == n_load + 1, f"attempt {k} of {n_load} failed silently"
        g2.check()
        assert g2.stats() == g.stats()
    assert not wrong, ("an allocation failure while loading a valid brain must raise "
                       f"MemoryError, not CorruptBrainError: {wrong[:3]}")


def test_alloc_attempt_counter():
    g = melvin.Graph()
    a = g._core._alloc_attempts
    g.generate(b"abc")
    g.predict(b"abc")
    g.score(b"abc")
    assert g._core._alloc_attempts == a       # queries allocate nothing in the pool
    g.feed(b"abc")
    assert g._core._alloc_attempts > a


def _merge_inputs(wiki_lines):
    parts = []
    for i in range(2):
        g = melvin.Graph(melvin.Limits(max_memory="256K"))
        for line in wiki_lines[i * 40:(i + 1) * 40]:
            g.feed(line)
        parts.append(g)
    return parts


def _merge_sweep(parts):
    """Fail every allocation attempt of each Core that merge builds (a copy of the largest input
    with the others absorbed into it, then, as this sum exceeds the caps, the compact rebuild of
    the trimmed sum): MemoryError, inputs untouched, nothing half-made."""
    before = [persist.dumps(g) for g in parts]
    merged = melvin.merge(parts)
    reference = persist.dumps(merged)
    assert merged.stats()["prunes"] > sum(g.stats()["prunes"] for g in parts), \
        "the scenario should exercise trimming after the merge too"
    with _cores_fail_at(merge_mod, -1) as made:
        melvin.merge(parts)
    assert len(made) == 2
    attempts = [core._alloc_attempts for core in made]
    raised = 0
    for which, n in enumerate(attempts):
        for k in range(1, n + 2):
            with _cores_fail_at(merge_mod, k, which):
                try:
                    merged = melvin.merge(parts)
                except MemoryError:
                    raised += 1
                    continue
            # Absorbed failures (shrinking is best effort) must not change the result.
            merged.check()
            assert persist.dumps(merged) == reference, f"attempt {k} of core {which}"
    assert [persist.dumps(g) for g in parts] == before
    return raised


def test_merge_fault_sweep(wiki_lines):
    assert _merge_sweep(_merge_inputs(wiki_lines)) > 0


@contextmanager
def _site_trace():
    mem._site_trace(True)
    try:
        yield
    finally:
        mem._site_trace(False)


def _site_name(frames):
    """The functions of a site's frames (addr2line on the debug info). Two sites can share names:
    one function calling the allocator from two places (e.g. `_count` for two indexes)."""
    names = []
    for path, offset in frames:
        name = f"{os.path.basename(path)}+{offset:#x}"
        if shutil.which("addr2line") and path != "?":
            out = subprocess.run(["addr2line", "-f", "-e", path, hex(offset - 1)],
                                 capture_output=True, text=True).stdout.split("\n")
            if len(out) > 1 and out[0] and out[0] != "??":
                name = out[0].replace("__pyx_f_6melvin_5_core_", "")[1:].split("_", 1)[-1]
        names.append(name)
    return " <- ".join(names)


def test_sweeps_cover_allocation_sites(lines, wiki_lines):
    """The sweeps together fail >= 95% of the allocation sites their scenarios reach (a site is a
    distinct chain of callers into the allocator, e.g. growing the edge table from a feed)."""
    with _site_trace():
        _sweep_feeds(lines)
        for budget in SMALL_BUDGETS:
            _sweep_feeds(wiki_lines[:40], melvin.Limits(max_memory=budget))
        test_fault_on_new_port(lines)
        test_prune_under_faults(wiki_lines)
        test_load_fault_sweep(lines)
        _merge_sweep(_merge_inputs(wiki_lines))
        sites = mem._site_report()
    reached = [s for s in sites if s["attempts"] > 0]
    covered = [s for s in reached if s["failed"] > 0]
    report = "\n".join(f"{s['attempts']:8d} {s['failed']:6d}  {_site_name(s['frames'])}"
                       for s in sorted(reached, key=lambda s: -s["attempts"]))
    print(f"\nallocation sites reached {len(reached)}, failed and survived {len(covered)} "
          f"({100 * len(covered) / len(reached):.1f}%)\nattempts failed  site\n{report}")
    assert len(reached) >= 10
    assert len(covered) >= 0.95 * len(reached), report


def test_feed_many_is_feed_in_a_loop(lines):
    """Training's batched path learns exactly what one feed per episode learns, and a failure
    ends the batch where the loop would have stopped: `learned` episodes in, the failing one
    leaving what feed leaves."""
    ref = melvin.Graph()
    for line in lines:
        ref.feed(line)
    g = melvin.Graph()
    assert g._core.feed_many(lines) == len(lines)
    assert persist.dumps(g) == persist.dumps(ref)
    _, n_attempts = _clean_run(lines)
    failures = 0
    for k in range(1, n_attempts + 1, 7):
        one = melvin.Graph()
        one._core._set_fail_at(k)
        failed_at = None
        for i, line in enumerate(lines):
            try:
                one._core.feed(line)
            except MemoryError:
                failed_at = i
                break
        many = melvin.Graph()
        many._core._set_fail_at(k)
        try:
            many._core.feed_many(lines)
            learned = None
        except MemoryError as exc:
            learned = exc.learned
            failures += 1
        assert learned == failed_at, k
        one._core._set_fail_at(-1)
        many._core._set_fail_at(-1)
        assert many.stats() == one.stats(), k
        many.check()
    assert failures > 5
    with pytest.raises(TypeError, match="bytes episodes"):
        melvin.Graph()._core.feed_many([b"ok", "not bytes"])


def test_feed_batch_skips_only_refused_episodes():
    """Graph._feed_batch (the training loops' path): an episode the core refuses with a
    MelvinError is reported and skipped, the rest of its batch is still learned; other errors
    (a failed allocation) propagate, as from feed."""
    learned = []

    class Core:
        def feed_many(self, batch, port):
            for i, ep in enumerate(batch):
                if ep.startswith(b"bad"):
                    exc = melvin.CapExceeded("refused") if ep != b"bad-alloc" else MemoryError()
                    exc.learned = i
                    raise exc
                learned.append(ep)
            return len(batch)

    g = melvin.Graph(_core=Core())
    refused = g._feed_batch([b"a", b"bad1", b"b", b"c", b"bad2", b"bad3", b"d"])
    assert learned == [b"a", b"b", b"c", b"d"]
    assert [at for at, _ in refused] == [1, 4, 5]
    assert all(isinstance(exc, melvin.CapExceeded) for _, exc in refused)
    with pytest.raises(MemoryError):
        g._feed_batch([b"e", b"bad-alloc", b"f"])
