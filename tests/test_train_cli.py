"""`python -m melvin train` end to end on small inputs: every input kind, splits, the JSON summary,
held-out scoring, deterministic checkpoints and resume (after --limit-bytes, kill -9 and SIGINT),
the memory budget, refused resumes and bad inputs. The CLI runs in subprocesses against the
installed package."""
import bz2
import gzip
import hashlib
import json
import lzma
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import melvin
from melvin.inputs import InputError, Reader, collect_sources, source_for

ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
# Subprocesses run outside the source tree, so `-m melvin` imports the installed package (with its
# compiled core), not ./melvin.
OUTSIDE = tempfile.gettempdir()

WORDS = None


def make_text(n_bytes: int, seed: int = 0, paragraphs: bool = True) -> bytes:
    """Deterministic, varied English-like text: lines of random words, some blank lines."""
    global WORDS
    r = random.Random(seed)
    if WORDS is None:
        w = random.Random(12345)
        WORDS = ["".join(w.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(w.randint(1, 9)))
                 for _ in range(3000)] + ["the", "of", "and", "a", "to", "in", "is", "was"] * 40
    out, size = [], 0
    while size < n_bytes:
        line = " ".join(r.choice(WORDS) for _ in range(r.randint(3, 16))).capitalize() + "."
        if paragraphs and r.random() < 0.15:
            line += "\n"
        out.append(line)
        size += len(line) + 1
    return ("\n".join(out) + "\n").encode()[:n_bytes]


def train(*args, stdin=None, check=True, timeout=120):
    cmd = [sys.executable, "-m", "melvin", "train", *map(str, args)]
    p = subprocess.run(cmd, cwd=OUTSIDE, input=stdin, capture_output=True, env=ENV, timeout=timeout,
                       check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\nstdout: {p.stdout.decode()}\n"
                             f"stderr: {p.stderr.decode()}")
    return p


def train_json(*args, **kw) -> dict:
    p = train(*args, "--json", "--quiet", **kw)
    return json.loads(p.stdout)


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    text = make_text(300_000, seed=1)
    (d / "plain.txt").write_bytes(text)
    return d, text


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The plain file's brain, trained with default options (lines)."""
    d, _ = corpus
    out = tmp_path_factory.mktemp("ref") / "ref.mlv"
    summary = train_json(d / "plain.txt", "--out", out, "--graph-memory", "64M")
    return out, summary


# --- summary, splits, input kinds ---------------------------------------------------------------

def test_plain_json_summary(corpus, reference):
    _, text = corpus
    out, s = reference
    for key in ("bytes", "episodes", "seconds", "mb_per_s", "nodes", "edges", "hierarchy_levels",
                "peak_rss_bytes", "memory_bytes", "prunes", "checkpoints", "stopped"):
        assert key in s, key
    assert s["bytes"] == len(text)
    assert s["episodes"] == len(text.split(b"\n")) - text.endswith(b"\n")   # blank lines too
    assert s["stopped"] == "complete" and s["prunes"] == 0
    assert s["hierarchy_levels"] >= 2 and s["nodes"] > 257 and s["edges"] > 0
    assert 0 < s["memory_bytes"] <= s["max_memory"] == 64 << 20
    g = melvin.load(out)
    st = g.stats()
    assert st["episodes"] == s["episodes"] and st["edges"] == s["edges"]
    assert g.check()
    manifest = json.loads(Path(str(out) + ".manifest.json").read_text())
    assert manifest["complete"] and manifest["inputs"][0]["size"] == len(text)
    assert manifest["inputs"][0]["fingerprint"].startswith("sha256:")


def test_human_summary_and_progress(corpus, tmp_path):
    d, _ = corpus
    p = train(d / "plain.txt", "--out", tmp_path / "b.mlv", "--graph-memory", "64M",
              "--checkpoint-every", "100K")
    out = p.stdout.decode()
    for word in ("input bytes", "episodes", "MB/s", "nodes", "peak RSS", "prunes", "hierarchy levels"):
        assert word in out
    err = p.stderr.decode()
    assert "train" in err and "B/s" in err           # the tqdm bar, in bytes
    assert "INFO" not in err and "WARNING" not in err  # nothing else unless --log-level asks



def test_progress_bar_ends_on_the_final_figures(tmp_path):
    """The bar samples the graph at most once a second; it still ends on what the summary says
    (a run under a small budget prunes after the last sample)."""
    (tmp_path / "a.txt").write_bytes(make_text(400_000, seed=3))
    p = train(tmp_path / "a.txt", "--out", tmp_path / "b.mlv", "--graph-memory", "2M", "--json")
    s = json.loads(p.stdout)
    assert s["prunes"] > 0
    parts = p.stderr.decode().replace("\r", "\n").split("\n")
    last = [part for part in parts if "nodes=" in part][-1]
    assert f"nodes={s['nodes']:,} edges={s['edges']:,}" in last and f"pruned={s['prunes']}]" in last

def test_split_modes(tmp_path):
    text = b"one two\nthree\n\n\nfour five\n  \nsix\n"
    (tmp_path / "a.txt").write_bytes(text)
    (tmp_path / "b.txt").write_bytes(b"seven\n")
    counts = {}
    for split in ("lines", "paragraphs", "documents"):
        s = train_json(tmp_path / "a.txt", tmp_path / "b.txt", "--out", tmp_path / f"{split}.mlv",
                       "--split", split, "--graph-memory", "4M")
        counts[split] = s["episodes"]
        assert s["bytes"] == len(text) + 6
    assert counts == {"lines": 8, "paragraphs": 4, "documents": 2}
    src = source_for(str(tmp_path / "a.txt"))
    assert list(Reader(src, "lines")) == [b"one two", b"three", b"", b"", b"four five", b"  ",
                                          b"six"]
    assert list(Reader(src, "paragraphs")) == [b"one two\nthree", b"four five", b"six"]
    assert list(Reader(src, "documents")) == [text]


def test_directory_recursive_sorted(corpus, tmp_path):
    _, text = corpus
    lines = text.split(b"\n")
    parts = [b"\n".join(lines[i::3]) + b"\n" for i in range(3)]
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_bytes(parts[1])
    (d / "a.txt").write_bytes(parts[0])
    (d / "sub" / "c.txt").write_bytes(parts[2])
    (d / ".hidden").write_bytes(b"never read\n")
    s_dir = train_json(d, "--out", tmp_path / "dir.mlv", "--graph-memory", "64M")
    s_files = train_json(d / "a.txt", d / "b.txt", d / "sub" / "c.txt", "--out",
                         tmp_path / "files.mlv", "--graph-memory", "64M")
    assert s_dir["inputs"] == 3 and s_dir["bytes"] == sum(map(len, parts))
    assert s_files["episodes"] == s_dir["episodes"]
    assert sha(tmp_path / "dir.mlv") == sha(tmp_path / "files.mlv")
    assert [os.path.basename(s.path) for s in collect_sources([str(d)])] == ["a.txt", "b.txt", "c.txt"]


def _compress(kind: str, data: bytes) -> bytes:
    if kind == "gz":
        return gzip.compress(data, mtime=0)
    if kind == "bz2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", "zst"])
def test_compressed_inputs_train_the_same_brain(kind, corpus, reference, tmp_path):
    _, text = corpus
    path = tmp_path / f"plain.txt.{kind}"
    path.write_bytes(_compress(kind, text))
    s = train_json(path, "--out", tmp_path / "c.mlv", "--graph-memory", "64M")
    assert s["bytes"] == len(text)
    assert sha(tmp_path / "c.mlv") == sha(reference[0])


def test_stdin_plain_and_compressed(corpus, reference, tmp_path):
    _, text = corpus
    train_json("-", "--out", tmp_path / "s.mlv", "--graph-memory", "64M", stdin=text)
    assert sha(tmp_path / "s.mlv") == sha(reference[0])
    train_json("-", "--out", tmp_path / "z.mlv", "--graph-memory", "64M",
               stdin=gzip.compress(text, mtime=0))
    assert sha(tmp_path / "z.mlv") == sha(reference[0])
    p = train("-", "--out", tmp_path / "s.mlv", "--resume", stdin=text, check=False)
    assert p.returncode == 1 and b"standard input" in p.stderr
    fifo = tmp_path / "pipe.txt"                       # a named pipe, as from <(zcat ...)
    os.mkfifo(fifo)
    cmd = [sys.executable, "-m", "melvin", "train", str(fifo), "--out", str(tmp_path / "f.mlv"),
           "--graph-memory", "64M", "--quiet", "--json"]
    proc = subprocess.Popen(cmd, env=ENV, cwd=OUTSIDE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(fifo, "wb") as f:
        f.write(text)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()
    assert json.loads(stdout)["bytes"] == len(text)
    assert sha(tmp_path / "f.mlv") == sha(reference[0])


WIKI = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">
  <siteinfo>
    <sitename>Wikipedia</sitename>
    <dbname>enwiki</dbname>
    <base>https://en.wikipedia.org/wiki/Main_Page</base>
    <generator>MediaWiki 1.41</generator>
    <case>first-letter</case>
    <namespaces>
      <namespace key="0" case="first-letter" />
      <namespace key="10" case="first-letter">Template</namespace>
    </namespaces>
  </siteinfo>
{pages}
</mediawiki>
"""

PAGE = """  <page>
    <title>{title}</title>
    <ns>{ns}</ns>
    <id>{id}</id>{redirect}
    <revision>
      <id>{rid}</id>
      <timestamp>2024-01-01T00:00:00Z</timestamp>
      <contributor><username>Editor</username><id>7</id></contributor>
      <model>wikitext</model>
      <format>text/x-wiki</format>
      <text bytes="{n}" xml:space="preserve">{text}</text>
      <sha1>0</sha1>
    </revision>
  </page>"""


def wiki_dump() -> bytes:
    from xml.sax.saxutils import escape

    articles = [
        ("Cat", 0, "", ("The '''cat''' is a small [[mammal|domesticated mammal]].{{Infobox animal}}"
                        "\n\nCats sat on the mat.<ref>A book</ref>\n\n== Diet ==\nCats eat [[fish]].")),
        ("Template:Infobox animal", 10, "", "{{{name}}} infobox"),
        ("Kitty", 0, '\n    <redirect title="Cat" />', "#REDIRECT [[Cat]]"),
        ("Dog", 0, "", "A '''dog''' is a [[Canidae|canid]].\n\nDogs ran in the park."),
    ]
    pages = "\n".join(PAGE.format(title=escape(t), ns=ns, id=i + 1, rid=100 + i, redirect=r,
                                  n=len(x), text=escape(x))
                      for i, (t, ns, r, x) in enumerate(articles))
    return WIKI.replace("{pages}", pages).encode()


def test_wiki_xml_dump(tmp_path):
    pytest.importorskip("mwxml")
    pytest.importorskip("mwparserfromhell")
    dump = wiki_dump()
    (tmp_path / "wiki.xml").write_bytes(dump)
    (tmp_path / "wiki.xml.bz2").write_bytes(bz2.compress(dump))
    docs = list(Reader(source_for(str(tmp_path / "wiki.xml")), "documents"))
    assert len(docs) == 2                           # Template: namespace and the redirect skipped
    assert docs[0].startswith(b"The cat is a small domesticated mammal.")
    assert b"Cats eat fish." in docs[0] and b"Dogs ran in the park." in docs[1]
    for doc in docs:
        assert b"[[" not in doc and b"'''" not in doc and b"{{" not in doc and b"<ref" not in doc
    paragraphs = list(Reader(source_for(str(tmp_path / "wiki.xml")), "paragraphs"))
    assert b"Cats sat on the mat." in paragraphs and len(paragraphs) >= 5
    s1 = train_json(tmp_path / "wiki.xml", "--out", tmp_path / "w1.mlv", "--split", "documents",
                    "--graph-memory", "4M")
    s2 = train_json(tmp_path / "wiki.xml.bz2", "--out", tmp_path / "w2.mlv", "--split", "documents",
                    "--graph-memory", "4M")
    assert s1["episodes"] == s2["episodes"] == 2 and s1["bytes"] == sum(map(len, docs))
    assert sha(tmp_path / "w1.mlv") == sha(tmp_path / "w2.mlv")
    # resume inside a dump: stop after the first article's paragraphs, continue, same brain
    full = train_json(tmp_path / "wiki.xml", "--out", tmp_path / "p1.mlv", "--split", "paragraphs",
                      "--graph-memory", "4M", "--checkpoint-every", "10")
    part = train_json(tmp_path / "wiki.xml", "--out", tmp_path / "p2.mlv", "--split", "paragraphs",
                      "--graph-memory", "4M", "--checkpoint-every", "10", "--limit-bytes", "60")
    assert part["stopped"] == "limit" and part["episodes"] < full["episodes"]
    train_json(tmp_path / "wiki.xml", "--out", tmp_path / "p2.mlv", "--resume")
    assert sha(tmp_path / "p1.mlv") == sha(tmp_path / "p2.mlv")
    (tmp_path / "bad.xml").write_bytes(dump[: len(dump) // 2])
    p = train(tmp_path / "bad.xml", "--out", tmp_path / "bad.mlv", "--quiet", check=False)
    assert p.returncode == 1 and b"bad.xml" in p.stderr and b"Traceback" not in p.stderr


# --- held-out scoring ---------------------------------------------------------------------------

def test_eval_bits_per_byte_matches_bench(corpus, reference, tmp_path):
    held = make_text(20_000, seed=99)
    (tmp_path / "held.txt").write_bytes(held)
    s = train_json(corpus[0] / "plain.txt", "--out", tmp_path / "e.mlv", "--graph-memory", "64M",
                   "--eval", tmp_path / "held.txt")
    g = melvin.load(reference[0])
    lines = held.split(b"\n")                        # exactly tools/bench.py's heldout_bpb
    expected = sum(g.score_bits(x) for x in lines) / sum(len(x) + 1 for x in lines)
    assert s["bits_per_byte"] == round(expected, 4)
    assert s["eval_bytes"] == len(held) + 1
    assert 1.0 < s["bits_per_byte"] < 8.0
    s = train_json(corpus[0] / "plain.txt", "--out", tmp_path / "e.mlv", "--graph-memory", "64M",
                   "--eval", tmp_path / "held.txt", "--eval-bytes", "5000")
    lines = held[:5000].split(b"\n")
    expected = sum(g.score_bits(x) for x in lines) / sum(len(x) + 1 for x in lines)
    assert s["bits_per_byte"] == round(expected, 4) and s["eval_bytes"] == 5001


# --- checkpoints and resume ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def long_input(tmp_path_factory):
    """~4 MB of varied text in three files (one gzip'd), and its uninterrupted brain."""
    d = tmp_path_factory.mktemp("long")
    text = make_text(4_000_000, seed=7)
    third = len(text) // 3
    cut1 = text.index(b"\n", third) + 1
    cut2 = text.index(b"\n", 2 * third) + 1
    (d / "1.txt").write_bytes(text[:cut1])
    (d / "2.txt.gz").write_bytes(gzip.compress(text[cut1:cut2], mtime=0))
    (d / "3.txt").write_bytes(text[cut2:])
    inputs = [d / "1.txt", d / "2.txt.gz", d / "3.txt"]
    opts = ["--graph-memory", "3M", "--checkpoint-every", "256K", "--split", "paragraphs"]
    out = d / "full.mlv"
    s = train_json(*inputs, "--out", out, *opts)
    assert s["prunes"] > 0
    return inputs, opts, out, s


def test_resume_after_limit_is_byte_identical(long_input, tmp_path):
    inputs, opts, full, s_full = long_input
    out = tmp_path / "r.mlv"
    s1 = train_json(*inputs, "--out", out, *opts, "--limit-bytes", "1700000")
    assert s1["stopped"] == "limit" and 1_700_000 <= s1["bytes"] < 1_800_000
    m = json.loads(Path(str(out) + ".manifest.json").read_text())
    assert not m["complete"] and m["position"]["input"] == 1 and m["pending"] is None
    s2 = train_json(*inputs, "--out", out, "--limit-bytes", "2500000", "--resume")
    assert s2["resumed"] and s2["stopped"] == "limit"
    s3 = train_json(*inputs, "--out", out, "--resume")
    assert s3["stopped"] == "complete" and s3["total_bytes"] == s_full["bytes"]
    assert s3["total_episodes"] == s_full["episodes"]
    assert sha(out) == sha(full)
    s4 = train_json(*inputs, "--out", out, "--resume")   # complete: nothing left to do
    assert s4["bytes"] == 0 and sha(out) == sha(full)


def test_mapped_writes_the_finished_brain_in_format_4(corpus, reference, tmp_path):
    """--mapped: the finished brain in format 4 (what convert --mapped makes of the compact one),
    the checkpoints before it compact; a resume of a finished run rewrites it so."""
    d, _ = corpus
    ref, s_ref = reference
    out = tmp_path / "m.mlv"
    s = train_json(d / "plain.txt", "--out", out, "--graph-memory", "64M", "--mapped",
                   "--checkpoint-every", "100K")
    assert s["checkpoints"] > 2 and s["edges"] == s_ref["edges"]
    assert out.read_bytes()[8:12] == (4).to_bytes(4, "little")
    conv = tmp_path / "conv.mlv"
    melvin.load(ref).save(conv, mapped=True)
    assert sha(out) == sha(conv)
    g = melvin.load(out)
    assert g._core._mapped_tables() and g.check()
    compact = tmp_path / "c.mlv"
    compact.write_bytes(ref.read_bytes())
    Path(str(compact) + ".manifest.json").write_bytes(Path(str(ref) + ".manifest.json").read_bytes())
    s2 = train_json(d / "plain.txt", "--out", compact, "--resume", "--mapped")
    assert s2["bytes"] == 0 and sha(compact) == sha(conv)


def _wait_for(pred, timeout=60.0, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        if proc is not None and proc.poll() is not None:
            return pred()
        time.sleep(0.005)
    return False


def _committed(manifest: Path):
    def check():
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return False
        return m.get("position") is not None
    return check


def test_resume_after_kill_9_is_byte_identical(long_input, tmp_path):
    inputs, opts, full, _ = long_input
    out = tmp_path / "k.mlv"
    cmd = [sys.executable, "-m", "melvin", "train", *map(str, inputs), "--out", str(out), *opts,
           "--quiet"]
    proc = subprocess.Popen(cmd, env=ENV, cwd=OUTSIDE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        assert _wait_for(_committed(Path(str(out) + ".manifest.json")), proc=proc)
        proc.kill()
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "finished before it could be killed: input too small?"
    s = train_json(*inputs, "--out", out, "--resume")
    assert s["resumed"] and s["stopped"] == "complete"
    assert sha(out) == sha(full)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_writes_checkpoint_and_exits(sig, code, long_input, tmp_path):
    inputs, opts, full, _ = long_input
    out = tmp_path / "i.mlv"
    cmd = [sys.executable, "-m", "melvin", "train", *map(str, inputs), "--out", str(out), *opts,
           "--quiet", "--log-level", "INFO", "--checkpoint-every", "0"]
    proc = subprocess.Popen(cmd, env=ENV, cwd=OUTSIDE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        for line in proc.stderr:                      # handlers are installed before this line
            if b"training on" in line:
                break
        time.sleep(0.2)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr.decode()
    assert b"Traceback" not in stderr
    m = json.loads(Path(str(out) + ".manifest.json").read_text())
    assert m["position"] is not None and not m["complete"]
    assert m["position"]["bytes"] > 0
    g = melvin.load(out)
    assert g.stats()["episodes"] == m["position"]["graph"]["episodes"]
    s = train_json(*inputs, "--out", out, "--resume")
    assert s["stopped"] == "complete"
    # --checkpoint-every 0 changes no training decision: same brain as the scheduled run
    assert sha(out) == sha(full)


# --- memory budget -------------------------------------------------------------------------------

def test_budget_prunes_and_stays_under(tmp_path):
    (tmp_path / "big.txt").write_bytes(make_text(3_000_000, seed=3))
    s = train_json(tmp_path / "big.txt", "--out", tmp_path / "m.mlv", "--max-memory", "2M")
    assert s["stopped"] == "complete" and s["bytes"] == 3_000_000
    assert s["memory_bytes"] <= 2 << 20 and s["peak_memory_bytes"] <= 2 << 20
    assert s["prunes"] > 0
    assert melvin.load(tmp_path / "m.mlv").check()


def test_bytewise_trains_one_byte_tokens_and_resumes(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(make_text(120_000, seed=8))
    out = tmp_path / "b.mlv"
    s = train_json(path, "--out", out, "--graph-memory", "64M", "--bytewise", "--limit-bytes",
                   "40000")
    assert s["hierarchy_nodes"] == 0
    s = train_json(path, "--out", out, "--resume")       # the checkpoint's limits carry on
    assert s["stopped"] == "complete" and s["hierarchy_nodes"] == 0
    g = melvin.load(out)
    assert not g.limits.hierarchy and g.limits.byte_context == (2, 3, 4, 5, 6, 8, 12, 24)
    # a brain trained with hierarchy is not continued bytewise
    other = tmp_path / "h.mlv"
    train_json(path, "--out", other, "--graph-memory", "64M", "--limit-bytes", "40000")
    p = train(path, "--out", other, "--resume", "--bytewise", "--quiet", check=False)
    assert p.returncode == 1 and b"--bytewise" in p.stderr and b"Traceback" not in p.stderr


def test_byte_context_option_sets_the_limits_and_must_match_on_resume(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(make_text(60_000, seed=9))
    out = tmp_path / "b.mlv"
    s = train_json(path, "--out", out, "--graph-memory", "64M", "--byte-context", "2,4",
                   "--limit-bytes", "20000")
    assert s["stopped"] == "limit"
    assert melvin.load(out).limits.byte_context == (2, 4)
    p = train(path, "--out", out, "--resume", "--byte-context", "2,4,24", "--quiet", check=False)
    assert p.returncode == 1 and b"--byte-context" in p.stderr and b"Traceback" not in p.stderr
    s = train_json(path, "--out", out, "--resume", "--byte-context", "2,4")
    assert s["stopped"] == "complete" and melvin.load(out).limits.byte_context == (2, 4)
    for bad in ("4,2", "2,x", "0"):
        p = train(path, "--out", tmp_path / "c.mlv", "--byte-context", bad, check=False)
        assert p.returncode == 2 and b"--byte-context" in p.stderr and b"Traceback" not in p.stderr


@pytest.mark.parametrize("option,field", [("--free-patterns", "word_tokens"),
                                          ("--no-embeddings", "embeddings")])
def test_switch_off_options_set_the_limits_and_must_match_on_resume(tmp_path, option, field):
    path = tmp_path / "t.txt"
    path.write_bytes(make_text(60_000, seed=9))
    out = tmp_path / "w.mlv"
    train_json(path, "--out", out, "--graph-memory", "64M", "--limit-bytes", "20000")
    assert getattr(melvin.load(out).limits, field) is True
    p = train(path, "--out", out, "--resume", option, "--quiet", check=False)
    assert p.returncode == 1 and option.encode() in p.stderr and b"Traceback" not in p.stderr
    out = tmp_path / "f.mlv"
    s = train_json(path, "--out", out, "--graph-memory", "64M", option)
    assert s["stopped"] == "complete" and getattr(melvin.load(out).limits, field) is False


# --- refused resumes and bad inputs -------------------------------------------------------------

def test_changed_input_is_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(make_text(200_000, seed=5))
    out = tmp_path / "c.mlv"
    train_json(path, "--out", out, "--graph-memory", "8M", "--limit-bytes", "50000")
    path.write_bytes(make_text(200_000, seed=6))           # same size, other content
    p = train(path, "--out", out, "--resume", "--quiet", check=False)
    assert p.returncode == 1 and b"changed since the checkpoint" in p.stderr
    assert b"Traceback" not in p.stderr
    with open(path, "ab") as f:
        f.write(b"more\n")
    p = train(path, "--out", out, "--resume", "--quiet", check=False)
    assert p.returncode == 1 and b"size 200000 -> 200005" in p.stderr
    other = tmp_path / "u.txt"
    other.write_bytes(b"x\n")
    p = train(path, other, "--out", out, "--resume", "--quiet", check=False)
    assert p.returncode == 1 and b"inputs differ" in p.stderr


def test_missing_file_fails_clearly(tmp_path):
    p = train(tmp_path / "nope.txt", "--out", tmp_path / "x.mlv", "--quiet", check=False)
    assert p.returncode == 1
    assert b"nope.txt" in p.stderr and b"no such file" in p.stderr
    assert b"Traceback" not in p.stderr
    assert not (tmp_path / "x.mlv").exists()


def test_skip_bad_continues(tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes(b"alpha beta\ngamma delta\n")
    corrupt = tmp_path / "broken.txt.gz"
    corrupt.write_bytes(gzip.compress(b"some text\n" * 1000, mtime=0)[:60])  # truncated
    notgz = tmp_path / "fake.txt.gz"
    notgz.write_bytes(b"plain text, not gzip\n")
    missing = tmp_path / "missing.txt"
    p = train(corrupt, "--out", tmp_path / "x.mlv", "--quiet", check=False)
    assert p.returncode == 1 and b"broken.txt.gz" in p.stderr and b"Traceback" not in p.stderr
    p = train(missing, notgz, corrupt, good, "--out", tmp_path / "y.mlv", "--quiet", "--json",
              "--skip-bad")
    s = json.loads(p.stdout)
    assert s["stopped"] == "complete" and s["episodes"] == 2
    assert len(s["skipped_inputs"]) == 3
    err = p.stderr.decode()
    assert "missing.txt" in err and "fake.txt.gz" in err and "broken.txt.gz" in err
    assert "WARNING" in err


def test_bad_options(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x\n")
    p = train(tmp_path / "a.txt", "--out", tmp_path / "a.mlv", "--max-memory", "lots", check=False)
    assert p.returncode != 0 and b"max-memory" in p.stderr
    p = train(tmp_path / "a.txt", check=False)
    assert p.returncode == 2 and b"--out" in p.stderr
    p = train(tmp_path / "a.txt", "--out", tmp_path / "no" / "such" / "dir.mlv", check=False)
    assert p.returncode == 1 and b"does not exist" in p.stderr
    p = train(tmp_path / "a.txt", "--out", tmp_path / "a.mlv", "--eval", tmp_path / "nope", check=False)
    assert p.returncode == 1 and b"--eval" in p.stderr and not (tmp_path / "a.mlv").exists()


# --- the reader itself ---------------------------------------------------------------------------

def _read_random_text(r, atoms, directory, split, compressed):
    """A random text of atoms (gzipped if compressed) read whole, one episode at a time, with a
    random max_episode: (text, cap, source, episodes, the position after each)."""
    data = b"".join(r.choice(atoms) for _ in range(r.randint(0, 60)))
    path = directory / ("t.txt.gz" if compressed else "t.txt")
    path.write_bytes(gzip.compress(data, mtime=0) if compressed else data)
    cap = r.choice([1, 2, 3, 7, 1 << 20])
    src = source_for(str(path))
    reader = Reader(src, split, max_episode=cap)
    episodes, positions = [], []
    for ep in reader:
        episodes.append(ep)
        positions.append(reader.position)
    assert reader.position["consumed"] == len(data)
    return data, cap, src, episodes, positions


@pytest.mark.parametrize("split", ["lines", "paragraphs", "documents"])
def test_reader_resumes_at_every_position(split, tmp_path):
    """Resuming from any recorded position yields exactly the remaining episodes, for random
    texts, tiny max_episode cuts and compressed streams."""
    r = random.Random(split)
    atoms = [b"a", b"bc", b" ", b"\t", b"\r", b"\n", b"\n\n", b"\n \n", b"xyz"]
    for trial in range(60):
        data, cap, src, episodes, positions = _read_random_text(r, atoms, tmp_path, split,
                                                                trial % 2 == 1)
        if split == "lines":
            # every line, blank ones included, cut into pieces of the cap; the newline ending a
            # line cut exactly at the cap is not a blank line
            *lines, last = data.split(b"\n")
            want = [p for line in lines
                    for p in ([line[i:i + cap] for i in range(0, len(line), cap)] or [b""])]
            want += [last[i:i + cap] for i in range(0, len(last), cap)]
            assert episodes == want, (data, cap)
        assert all(0 < len(ep) <= cap or (split == "lines" and not ep) for ep in episodes)
        for k, pos in enumerate(positions):
            rest = list(Reader(src, split, max_episode=cap, start=pos))
            assert episodes[:k + 1] + rest == episodes, (data, cap, k, pos)


@pytest.mark.parametrize("split", ["lines", "paragraphs"])
def test_reader_batches_are_its_episodes(split, tmp_path, monkeypatch):
    """Reader.batches (training's path) yields the episodes one at a time iteration yields, in
    lists that end exactly at the first episode reaching the limit stop() names, with the
    position after each list the one recorded after its last episode. Tiny read chunks put line
    ends, cap cuts and limits across chunk boundaries."""
    import melvin.inputs as inputs

    r = random.Random(split)
    atoms = [b"a", b"bc", b" ", b"\r", b"\n", b"\n\n", b"xyz", b"L" * 9]
    for trial in range(150):
        monkeypatch.setattr(inputs, "CHUNK", r.choice([1, 2, 3, 5, 8, 64, 1 << 20]))
        data, cap, src, episodes, ends = _read_random_text(r, atoms, tmp_path, split,
                                                           trial % 3 == 0)
        limits = sorted(r.sample(range(1, len(data) + 2), min(len(data) + 1, r.randint(0, 8))))
        reader = Reader(src, split, max_episode=cap)
        got = []
        for batch in reader.batches(lambda: limits[0] if limits else 1 << 62):
            assert batch, (data, cap)
            first = len(got)
            got += batch
            assert reader.position == ends[len(got) - 1], (data, cap)
            reached = [k for k in range(first, len(got)) if limits and ends[k]["consumed"] >= limits[0]]
            assert reached in ([], [len(got) - 1]), (data, cap, limits, batch)
            while limits and reader.consumed >= limits[0]:
                limits.pop(0)
        assert got == episodes, (data, cap)
        assert reader.consumed == len(data)


def test_collect_sources_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        collect_sources([str(tmp_path / "missing")])
    assert issubclass(InputError, melvin.MelvinError)
    skipped = []
    assert collect_sources([str(tmp_path / "missing")], skip_bad=True, skipped=skipped) == []
    assert len(skipped) == 1
    bad = tmp_path / "bad.txt.xz"
    bad.write_bytes(b"not xz at all")
    with pytest.raises(InputError, match="bad.txt.xz"):
        list(Reader(source_for(str(bad)), "lines"))
