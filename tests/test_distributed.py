"""melvin.distributed: the shard plan reproduces the single-process episode stream; a 2-worker
LocalCluster trains, merges and saves a brain that passes check(), scores close to single-process,
is byte-identical across runs and ship modes, resumes from shard checkpoints, and survives a worker
killed mid-shard; melvin.merge is order-independent and merging an empty graph changes nothing."""
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import melvin
from melvin.distributed import (Plan, add_arguments, heldout_bits, plan_shards, run_from_args,
                                shard_episodes, train_distributed, vocabulary)
from melvin.inputs import Reader, source_for
from melvin.persist import dumps

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
distributed = pytest.importorskip("distributed")

TRAIN = CORPUS / "wiki_train.txt"
HELDOUT = CORPUS / "wiki_heldout.txt"
LIMIT = 300_000
LIMITS = melvin.Limits(max_memory="256M")
SMALL = melvin.Limits(max_memory="16M")


def _need_corpus():
    if not TRAIN.exists() or not HELDOUT.exists():
        pytest.skip(f"corpus files in {CORPUS} are absent")


def _sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --- the plan: exactly the single-process episodes, cut at episode boundaries ----------------------

_LINE = st.one_of(
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"x")),
    st.sampled_from([b"", b" ", b"\t\r", b"\r", b"word", b"a longer line of text here"]),
    st.integers(min_value=1, max_value=90).map(lambda n: b"L" * n),
)


@settings(max_examples=80, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_LINE, max_size=40), trailing=st.booleans(),
       split=st.sampled_from(["lines", "paragraphs"]), max_episode=st.integers(1, 40),
       shards=st.integers(1, 6), vocab=st.sampled_from([None, 0, 1, 7, 30]),
       limit=st.one_of(st.none(), st.integers(1, 400)))
def test_plan_reproduces_reader_episodes(lines, trailing, split, max_episode, shards, vocab, limit):
    data = b"\n".join(lines) + (b"\n" if trailing and lines else b"")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "in.txt")
        with open(path, "wb") as f:
            f.write(data)
        plan = plan_shards([path], split=split, shards=shards, max_episode=max_episode,
                           vocab_bytes=vocab, limit_bytes=limit)
        assert isinstance(plan, Plan) and len(plan) >= 1
        got = [e for s in plan for e in shard_episodes(s, with_sample=True)]
        full, want = [], None
        reader = Reader(source_for(path), split, max_episode=max_episode)
        for episode in reader:
            full.append(episode)
            if want is None and limit is not None and reader.consumed >= limit:
                want = list(full)       # where the single-process trainer's --limit-bytes stops
        if limit is None:
            assert got == full
        else:
            # the plan cuts at the first line (paragraph) boundary at or after the limit: a prefix
            # of the stream; it can run to the end of a line cut into max_episode pieces, or stop
            # one paragraph short when the limit falls among blank lines
            want = full if want is None else want
            assert got == full[:len(got)]
            assert len(got) >= len(want) or len(want) - len(got) <= 1
        # shards tile the input: contiguous, ordered, non-overlapping ranges
        pos = plan.sample.pieces[-1].end if plan.sample else 0
        for s in plan:
            for p in s.pieces:
                assert p.start == pos
                pos = p.size if p.end is None else p.end
        if plan.sample:
            assert plan.shards[0].base == "sample" and all(s.base == "vocab" for s in plan.shards[1:])


def test_plan_multiple_files_and_documents(tmp_path):
    files = []
    for i in range(5):
        p = tmp_path / f"f{i}.txt"
        p.write_bytes(b"".join(b"file %d line %d\n" % (i, j) for j in range(50 * (i + 1))))
        files.append(p)
    want = [e for p in files for e in Reader(source_for(str(p)), "lines")]
    for shards in (1, 2, 3, 8):
        plan = plan_shards([str(tmp_path)], shards=shards)
        assert [e for s in plan for e in shard_episodes(s, with_sample=True)] == want
    plan = plan_shards([str(tmp_path)], split="documents", shards=3)
    assert [e for s in plan for e in shard_episodes(s)] == [p.read_bytes() for p in files]
    assert all(p.start == 0 and p.end is None for s in plan for p in s.pieces)


def test_plan_refuses_stdin_and_bad_options(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"x\n")
    with pytest.raises(melvin.MelvinError):
        plan_shards(["-"])
    with pytest.raises(ValueError):
        plan_shards([str(p)], split="words")
    with pytest.raises(ValueError):
        plan_shards([str(p)], shards=0)


# --- merge properties (hypothesis, small, derandomized) --------------------------------------------

_EPISODES = st.lists(st.text(alphabet="abc d", min_size=1, max_size=12), min_size=1, max_size=12)


def _graph(episodes):
    g = melvin.Graph(SMALL)
    for e in episodes:
        g.feed(e)
    return g


@settings(max_examples=25, derandomize=True, deadline=None)
@given(a=_EPISODES, b=_EPISODES, c=_EPISODES)
def test_merge_is_order_independent(a, b, c):
    ga, gb, gc = _graph(a), _graph(b), _graph(c)
    assert dumps(melvin.merge([ga, gb])) == dumps(melvin.merge([gb, ga]))
    ref = dumps(melvin.merge([ga, gb, gc]))
    for order in ([gc, ga, gb], [gb, gc, ga], [gc, gb, ga]):
        assert dumps(melvin.merge(order)) == ref


def test_merge_refuses_incompatible_contexts():
    a = _graph(["hello world"] * 3)
    b = melvin.Graph(melvin.Limits(max_memory="16M", byte_context=(3, 6)))
    b.feed("hello world")
    with pytest.raises(ValueError, match="context limits"):
        melvin.merge([a, b])
    with pytest.raises(ValueError, match="context limits"):
        a._core.absorb(b._core)
    with pytest.raises(ValueError):
        a._core.absorb(a._core)


def test_merge_consuming_equals_merge():
    """The distributed merge builds inside a loaded input instead of a copy: the same graph
    (spare capacity may differ)."""
    import importlib

    from melvin.persist import loads

    merge_mod = importlib.import_module("melvin.merge")

    def content(g):
        st = g._core.export_state()
        st["counters"].pop("peak_memory_bytes")
        return [st[k].tobytes() for k in ("nodes", "contexts", "edges")], st["arena"], st["counters"]

    a, b = _graph(["hello world", "hello there"] * 4), _graph(["world of hello", "there"] * 5)
    want = melvin.merge([a, b])
    got = merge_mod.merge_consuming([loads(dumps(b)), loads(dumps(a))])
    got.check()
    assert content(got) == content(want)


def test_merge_rescales_contexts_that_overflow():
    g = melvin.Graph(SMALL)
    for i in range(48000):
        g.feed("a" if i % 4 else "b")
    m = melvin.merge([g, g])
    m.check()

    def by_key(graph):
        st = graph._core.export_state()
        keys = st["contexts"]["key"]
        node_keys = graph._core.node_keys()
        out = {}
        for e in st["edges"]:
            out.setdefault(int(keys[e["ctx"]]), {})[int(node_keys[e["dst"]])] = int(e["count"])
        return out

    src, got = by_key(g), by_key(m)
    assert got.keys() == src.keys()
    rescaled = 0
    for ctx, edges in src.items():
        shift = 0                                 # both sides halve (rounding up) until sums fit
        while max(2 * -(-c >> shift) for c in edges.values()) > 0xFFFF:
            shift += 1
        rescaled += shift > 0
        assert got[ctx] == {d: 2 * -(-c >> shift) for d, c in edges.items()}
    assert rescaled                               # the 36000-count edge overflows once doubled


_PROBES = [b"a", b"ab", b"abc", b"c d", b"dd", b"zz", b"a b c"]


@settings(max_examples=25, derandomize=True, deadline=None)
@given(a=_EPISODES)
def test_merge_with_empty_graph_changes_nothing(a):
    g = _graph(a)
    for m in (melvin.merge([g, melvin.Graph(SMALL)]), melvin.merge([melvin.Graph(SMALL), g])):
        m.check()
        s, t = g.stats(), m.stats()
        for k in ("nodes", "contexts", "edges", "bytes_fed", "episodes"):
            assert s[k] == t[k], k
        for p in _PROBES:
            assert m.score_bits(p) == pytest.approx(g.score_bits(p), rel=1e-12, abs=1e-12)
            got, want = m.predict(p, k=5), g.predict(p, k=5)
            assert [t for t, _ in got] == [t for t, _ in want]
            assert [q for _, q in got] == pytest.approx([q for _, q in want], rel=1e-12)
            assert m.generate(p, max_bytes=16) == g.generate(p, max_bytes=16)


def test_vocabulary_keeps_patterns_only():
    g = _graph(["hello world", "hello there"] * 5)
    v = vocabulary(g)
    v.check()
    s, t = g.stats(), v.stats()
    assert t["nodes"] == s["nodes"] and t["edges"] == 0 and t["contexts"] == 0
    assert t["bytes_fed"] == 0 and t["episodes"] == 0
    v.feed("hello world")
    v.check()


class _Workers:
    """A client whose workers answer run() with the given results (an exception as on_error="return"
    hands it back)."""

    def __init__(self, results):
        self.results = results

    def run(self, function, on_error="raise"):
        assert on_error == "return"
        return dict(self.results)


def test_workers_that_cannot_run_this_melvin_are_refused():
    """A worker that cannot import the extension (its tasks once waited forever: the cluster saw
    no error) or imports another version is named in the error before any task is sent."""
    from melvin.distributed import DistributedError, _check_workers, _worker_melvin
    mine = _worker_melvin()
    _check_workers(_Workers({"tcp://a": mine, "tcp://b": list(mine)}))    # (as a list too)
    broken = ModuleNotFoundError("No module named 'melvin._core.core'")
    with pytest.raises(DistributedError, match=r"1 of 2 worker\(s\).*tcp://b.*melvin._core.core"):
        _check_workers(_Workers({"tcp://a": mine, "tcp://b": broken}))
    with pytest.raises(DistributedError, match=r"tcp://a: melvin 0.0.1, brain format"):
        _check_workers(_Workers({"tcp://a": ("0.0.1", mine[1]), "tcp://b": mine}))


# --- end to end on a 2-worker LocalCluster -------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 3}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
        c = Client(cluster)
    c.wait_for_workers(2, timeout=60)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def single():
    """The single-process brain on the same episodes, and its held-out bits per byte."""
    _need_corpus()
    plan = plan_shards([str(TRAIN)], shards=1, limit_bytes=LIMIT, vocab_bytes=0)
    g = melvin.Graph(LIMITS)
    n = 0
    for e in shard_episodes(plan.shards[0]):
        g.feed(e)
        n += 1
    bits, nbytes = heldout_bits(g, str(HELDOUT))
    return {"graph": g, "episodes": n, "bpb": bits / nbytes}


@pytest.fixture(scope="module")
def baseline(client, single, tmp_path_factory):
    """A 3-shard file-mode run with shard checkpoints: the reference brain for the tests below."""
    d = tmp_path_factory.mktemp("baseline")
    out = d / "brain.mlv"
    summary = train_distributed([str(TRAIN)], out, limits=LIMITS, scheduler=client, shards=3,
                                limit_bytes=LIMIT, checkpoint_dir=d / "shards")
    return {"out": out, "summary": summary, "sha": _sha(out), "dir": d}


def test_end_to_end(baseline, single):
    s = baseline["summary"]
    assert s["shards"] == 3 and s["shards_trained"] == 3 and s["shards_resumed"] == 0
    assert s["merges"] == 2 and s["workers"] == 2
    assert 0 < s["worker_peak_rss"] < 4 << 30
    assert s["dashboard_link"].startswith("http")
    assert s["vocab_sample_bytes"] > 0
    assert s["episodes"] == single["episodes"]
    assert s["sha256"] == "sha256:" + baseline["sha"]
    g = melvin.load(baseline["out"])
    g.check()
    assert g.stats()["episodes"] == single["episodes"]
    assert g.stats()["bytes_fed"] == single["graph"].stats()["bytes_fed"]
    bits, nbytes = heldout_bits(g, str(HELDOUT))
    bpb = bits / nbytes
    # merged shards learn less shared structure than one pass; on 300 KB the gap is ~6%
    assert single["bpb"] * 0.95 < bpb < single["bpb"] * 1.12, (bpb, single["bpb"])
    assert g.generate("The ", max_bytes=20)
    # scratch merge files are gone; the checkpointed shards and their manifests stay
    names = sorted(os.listdir(baseline["dir"] / "shards"))
    assert len([n for n in names if n.endswith(".mlv")]) == 3
    assert len([n for n in names if n.endswith(".json")]) == 3


def test_deterministic_across_runs_and_ship_modes(client, baseline, tmp_path):
    for ship in ("file", "bytes"):
        out = tmp_path / f"{ship}.mlv"
        s = train_distributed([str(TRAIN)], out, limits=LIMITS, scheduler=client, shards=3,
                              limit_bytes=LIMIT, ship=ship)
        assert _sha(out) == baseline["sha"], ship
        assert s["shards_resumed"] == 0
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]   # scratch removed


def test_own_local_cluster_gives_the_same_brain(baseline, tmp_path):
    # workers=N starts its own cluster and trains the vocabulary sample while it starts (not as
    # a task): the brain must be the one the task path builds
    out = tmp_path / "local.mlv"
    s = train_distributed([str(TRAIN)], out, limits=LIMITS, workers=2, shards=3,
                          limit_bytes=LIMIT)
    assert s["workers"] == 2 and s["vocab_sample_bytes"] > 0 and s["vocab_sample_seconds"] > 0
    assert _sha(out) == baseline["sha"]


def test_the_last_merge_may_use_a_larger_budget(client, baseline, tmp_path):
    # only the root merge's brain gets final_memory (it is not merged again); the shards and the
    # inner merge stay within the limits, so this run's inputs to the root are the baseline's
    out = tmp_path / "final.mlv"
    s = train_distributed([str(TRAIN)], out, limits=LIMITS, scheduler=client, shards=3,
                          limit_bytes=LIMIT, final_memory="300M")
    g = melvin.load(out)
    assert g.limits.max_memory == s["max_memory"] == 300 << 20
    assert g.limits == dataclasses.replace(LIMITS, max_memory=300 << 20)
    assert g.check()
    assert g.stats()["episodes"] == melvin.load(baseline["out"]).stats()["episodes"]


def test_one_shard_is_the_single_process_brain(client, single, tmp_path):
    out = tmp_path / "one.mlv"
    s = train_distributed([str(TRAIN)], out, limits=LIMITS, scheduler=client, shards=1,
                          limit_bytes=LIMIT, ship="bytes")
    assert s["merges"] == 0 and s["vocab_sample_bytes"] == 0
    assert out.read_bytes() == dumps(single["graph"])


def test_resume_reuses_matching_shards(client, baseline, tmp_path):
    ck = baseline["dir"] / "shards"
    out = tmp_path / "resumed.mlv"
    s = train_distributed([str(TRAIN)], out, limits=LIMITS, scheduler=client, shards=3,
                          limit_bytes=LIMIT, checkpoint_dir=ck, ship="bytes")
    assert s["shards_resumed"] == 3 and s["shards_trained"] == 0
    assert _sha(out) == baseline["sha"]
    # a damaged shard brain does not match its manifest's checksum: only it is retrained
    victim = sorted(n for n in os.listdir(ck) if n.endswith(".mlv"))[1]
    data = bytearray((ck / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (ck / victim).write_bytes(bytes(data))
    s = train_distributed([str(TRAIN)], out, limits=LIMITS, scheduler=client, shards=3,
                          limit_bytes=LIMIT, checkpoint_dir=ck)
    assert s["shards_resumed"] == 2 and s["shards_trained"] == 1
    assert _sha(out) == baseline["sha"]
    # other limits do not match the manifests: everything is retrained
    s = train_distributed([str(TRAIN)], tmp_path / "other.mlv", limits=melvin.Limits(max_memory="200M"),
                          scheduler=client, shards=3, limit_bytes=LIMIT, checkpoint_dir=ck,
                          resume=True)
    assert s["shards_resumed"] == 0


@pytest.mark.parametrize("victim", [0, 1])
def test_worker_killed_mid_shard(client, baseline, tmp_path, victim):
    # shard 0's task also merges shard 1 into its graph, waiting for it: killing either worker
    # (the waiting one, or the one it waits for) must cost a retry, not the run
    marker = tmp_path / "killed"
    out = tmp_path / "survivor.mlv"
    s = train_distributed([str(TRAIN)], out, limits=LIMITS, scheduler=client, shards=3,
                          limit_bytes=LIMIT, retries=2,
                          _fault={"marker": str(marker), "shard": victim})
    assert marker.exists(), "the fault was never injected"
    assert s["shards"] == 3 and s["shards_trained"] == 3
    assert _sha(out) == baseline["sha"]
    client.wait_for_workers(2, timeout=60)     # the nanny brought the worker back


def test_cli_run_from_args(client, single, tmp_path, capsys):
    from melvin.train import build_parser

    ap = build_parser()                      # build_parser() already adds --workers/--scheduler
    out = tmp_path / "cli.mlv"
    args = ap.parse_args([str(TRAIN), "--out", str(out), "--scheduler", client.scheduler.address,
                          "--shards", "3", "--graph-memory", "256M", "--limit-bytes", str(LIMIT),
                          "--eval", str(HELDOUT), "--json", "--quiet", "--mapped"])
    assert run_from_args(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["shards"] == 3 and summary["bits_per_byte"] > 0
    assert summary["checkpoint_dir"] is None and not os.path.exists(str(out) + ".shards")
    assert out.read_bytes()[8:12] == (4).to_bytes(4, "little") and summary["mapped_seconds"] >= 0
    g = melvin.load(out)                     # --mapped: the merged brain in format 4, in place
    assert g._core._mapped_tables() and g.check()
    args = ap.parse_args([str(TRAIN), "--out", str(out), "--workers", "2", "--scheduler", "x"])
    assert run_from_args(args) == 2
