"""Behaviour tests for the mechanisms beyond the core scenarios: attention over the episode,
cross-modal recall, temporal queries, confidence and adaptive stopping."""
import random
import re

import pytest

import melvin


def _pairs(n=50, seed=1):
    rng = random.Random(seed)
    words = ("red green blue cat dog bird fish tree river stone cloud fire water sun moon star "
             "wind rain snow leaf").split()
    return [(" ".join(rng.choice(words) for _ in range(3)) + f" {i}",
             bytes(rng.randrange(256) for _ in range(16))) for i in range(n)]


@pytest.fixture(scope="module", params=[True, False], ids=["hierarchy", "bytewise"])
def attending(wiki_lines, request):
    """The same training with the attention heads on and off."""
    out = {}
    for on in (True, False):
        g = melvin.Graph(melvin.Limits(attention=on, hierarchy=request.param))
        for line in wiki_lines[:300]:
            g.feed(line)
        out[on] = g
    return out


def test_attention_recalls_a_new_name_from_earlier_in_the_episode(attending):
    """A name training never saw: after its first mention, the induction heads (what followed
    "Mount" earlier in this text) predict it again; the graph alone cannot."""
    on, off = attending[True], attending[False]
    text = b"Mount Zorbatu is a volcano. Many people climb Mount Zorbatu every year."
    # The prompt ends where the model's own segmentation starts the second "Zorbatu" (" Z" with
    # word patterns, "Z" bytewise), and the name's first token is what the heads must predict.
    second = text.rindex(b"Zorbatu")
    pos, cut, z = 0, None, None
    for v, *_ in on._core.score_detail(text):
        payload = on._core.node_payload(v)
        if pos <= second < pos + len(payload):
            cut, z = pos, v
            break
        pos += len(payload)
    prompt, name = text[:cut], on._core.node_payload(z)
    assert name.lstrip().startswith(b"Z")
    assert on.predict(prompt, k=1)[0][0] == name
    assert name not in [tok for tok, _ in off.predict(prompt, k=3)]
    assert on._core.distribution(prompt)[z] > 100 * off._core.distribution(prompt)[z]
    assert on.score_bits(text) < 0.9 * off.score_bits(text)


def test_attention_learns_nothing_and_needs_history(attending):
    """The heads read the episode, never the graph: training is identical, and with no history
    (the first token of an episode) the distributions are equal."""
    on, off = attending[True], attending[False]
    a, b = on.stats(), off.stats()
    assert a.pop("attention_heads") == 2 and b.pop("attention_heads") == 0
    assert a == b
    assert (on._core.distribution(b"") == off._core.distribution(b"")).all()


@pytest.fixture(scope="module")
def bridged():
    pairs = _pairs()
    g = melvin.Graph()
    for _ in range(5):
        for text, blob in pairs:
            g.associate({melvin.PORT_TEXT: text, melvin.PORT_SENSOR: blob})
    g.check()
    return g, pairs


def test_cross_modal_text_to_binary(bridged):
    g, pairs = bridged
    hits = sum(g.generate(t, port=melvin.PORT_TEXT, out_port=melvin.PORT_SENSOR, max_bytes=64) == b
               for t, b in pairs)
    assert hits >= 0.95 * len(pairs)


def test_cross_modal_binary_to_text(bridged):
    g, pairs = bridged
    hits = sum(g.generate(b, port=melvin.PORT_SENSOR, out_port=melvin.PORT_TEXT, max_bytes=64)
               == t.encode() for t, b in pairs)
    assert hits >= 0.95 * len(pairs)


def test_cross_modal_survives_save_load(bridged):
    g, pairs = bridged
    g2 = melvin.persist.loads(melvin.persist.dumps(g))
    g2.check()
    for t, b in pairs[:10]:
        assert g2.generate(t, out_port=melvin.PORT_SENSOR, max_bytes=64) == b


def test_same_bytes_on_different_ports_are_different_patterns():
    g = melvin.Graph()
    for _ in range(10):
        g.feed(b"abcabc", port=melvin.PORT_TEXT)
        g.feed(b"xyzxyz", port=melvin.PORT_AUDIO)
    g.check()
    assert g.generate(b"abc", port=melvin.PORT_TEXT) == b"abc"
    assert g.generate(b"abc", port=melvin.PORT_AUDIO) != b"abc"
    assert g.generate(b"xyz", port=melvin.PORT_AUDIO) == b"xyz"


def test_associate_single_port_is_feed():
    a, b = melvin.Graph(), melvin.Graph()
    a.associate({melvin.PORT_TEXT: b"hello"})
    b.feed(b"hello")
    assert melvin.persist.dumps(a) == melvin.persist.dumps(b)


def test_associate_rejects_bad_streams():
    g = melvin.Graph()
    with pytest.raises(TypeError):
        g.associate([b"x"])
    with pytest.raises(ValueError):
        g.associate({300: b"x"})


# One word: an optional leading space, then letters (bytes >= 0x80 count as letters), or other
# symbols; a digit stands alone (after an optional space).
_WORD = re.compile(rb"^ ?(?:[A-Za-z\x80-\xff]+|[^ A-Za-z0-9\x80-\xff]+|[0-9])$")


def _patterns(g, port=melvin.PORT_TEXT):
    core = g._core
    return [p for v, p in ((v, core.node_payload(v)) for v in range(g.stats()["nodes"]))
            if len(p) > 1 and core.node_port(v) == port]


def test_text_patterns_stay_within_one_word(wiki_lines):
    words = melvin.Graph()
    free = melvin.Graph(melvin.Limits(word_tokens=False))
    special = b"In 1987, 12,000 people -- a record -- came. Caf\xc3\xa9s!"
    for line in wiki_lines[:500] + [special] * 12:
        words.feed(line)
        free.feed(line)
    patterns = _patterns(words)
    assert len(patterns) > 1000
    assert [p for p in patterns if not _WORD.match(p)] == []
    assert {b" people", b" record", b" Caf\xc3\xa9s", b" 1", b" --"} <= set(patterns)
    assert sum(not _WORD.match(p) for p in _patterns(free)) > 1000      # "e the", "s of t", ...
    words.check()


def test_word_patterns_are_text_port_only():
    """Binary streams on other ports fuse freely: a recurring 16-byte pattern with spaces and
    digits in it becomes one token there."""
    blob = b"ab 12 cd 34 ef 5"
    g = melvin.Graph()
    for _ in range(40):
        g.feed(blob, port=melvin.PORT_SENSOR)
        g.feed(blob)
    assert blob in _patterns(g, melvin.PORT_SENSOR)
    assert all(_WORD.match(p) for p in _patterns(g))


def test_word_tokens_limit_validated_and_saved(tmp_path):
    with pytest.raises(ValueError):
        melvin.Limits(word_tokens=1)
    g = melvin.Graph(melvin.Limits(word_tokens=False))
    g.feed(b"the cat sat")
    g.save(tmp_path / "free.mlv")
    assert melvin.load(tmp_path / "free.mlv").limits.word_tokens is False


def _pseudo_words(n, seed=5):
    rng = random.Random(seed)
    words = set()
    while len(words) < n:
        words.add(" " + "".join(rng.choice("bcdfghjklmnpqrstvwz") + rng.choice("aeiou")
                                for _ in range(2)))
    return sorted(words)


def _the_x_sat(embeddings):
    """80 made-up nouns each seen 4 times with " sat", " ate" and " ran" after "the", then " fox"
    seen 6 times, only after "a" and only followed by " sat"."""
    rng = random.Random(5)
    lines = [f"the{w}{v} down" for w in _pseudo_words(80) for v in (" sat", " ate", " ran")
             for _ in range(4)]
    rng.shuffle(lines)
    g = melvin.Graph(melvin.Limits(embeddings=embeddings))
    for line in lines + ["a fox sat down"] * 6:
        g.feed(line)
    return g


def test_embeddings_make_patterns_used_alike_similar():
    g = melvin.Graph()
    for _ in range(6):
        for animal in ("cat", "dog", "bird"):
            for verb in ("sat", "ate", "ran"):
                g.feed(f"the {animal} {verb} down")
    emb = g.embedding(" cat")                           # (and fragments seen before the words formed)
    assert set(sorted(emb, key=emb.get)[-3:]) == {b" sat", b" ate", b" ran"}
    assert len(emb) <= g.limits.embedding_dims
    assert abs(sum(w * w for w in emb.values()) - 1.0) < 1e-6
    assert g.similarity(" cat", " dog") > 0.9           # the same slots
    assert g.similarity(" cat", " down") == 0.0         # " down" ends every line
    assert g.similarity(" cat", "never seen") == 0.0 and g.embedding("never seen") == {}
    assert set(g.category(" cat")) >= {b" cat", b" dog", b" bird"}


def test_rare_word_borrows_its_categorys_continuations():
    """The "the _ sat" case: after "the fox", never seen, the category " fox" shares with the
    nouns it was used like lends their other continuations (" ate", " ran")."""
    on, off = _the_x_sat(True), _the_x_sat(False)
    assert on.after(" fox") == [(b" sat", 1.0)]
    members = on.category(" fox")
    assert members is not None and \
        len(set(members) & {w.encode() for w in _pseudo_words(80)}) >= 10
    assert off.category(" fox") is None and off.stats()["categories"] == 0
    p_on, p_off = dict(on.predict("the fox", k=50)), dict(off.predict("the fox", k=50))
    for verb in (b" ate", b" ran"):
        assert p_on[verb] > 1.5 * p_off[verb]
    assert p_on[b" sat"] > p_off[b" sat"]                # " sat" too, as the nouns' commonest


def test_categories_are_capped_and_persist(wiki_lines, tmp_path):
    g = melvin.Graph(melvin.Limits(max_categories=8))
    for line in wiki_lines[:300]:
        g.feed(line)
    s = g.stats()
    assert s["categories"] == 8 and s["embeddings"] > 8
    g.check()
    g.save(tmp_path / "c.mlv")
    g2 = melvin.load(tmp_path / "c.mlv")
    assert g2.stats() == s
    assert g2.category(" the") == g.category(" the")
    for line in wiki_lines[300:340]:                    # both continue identically
        g.feed(line)
        g2.feed(line)
    assert g2.stats() == g.stats()
    assert g2.score(wiki_lines[400]) == g.score(wiki_lines[400])
    with pytest.raises(ValueError):
        melvin.Limits(max_categories=1 << 16)
    with pytest.raises(ValueError):
        melvin.Limits(embedding_dims=65)


def test_merge_unifies_categories_by_profile(wiki_lines):
    a, b = melvin.Graph(), melvin.Graph()
    for line in wiki_lines[:150]:
        a.feed(line)
    for line in wiki_lines[150:300]:
        b.feed(line)
    m = melvin.merge([a, b])
    m.check()
    assert max(a.stats()["categories"], b.stats()["categories"]) <= m.stats()["categories"] <= \
        a.stats()["categories"] + b.stats()["categories"]
    self_merge = melvin.merge([a, a])                   # a copy keeps its numbering
    self_merge.check()
    assert self_merge.stats()["categories"] == a.stats()["categories"]
    assert self_merge.category(" the") == a.category(" the")


def test_temporal_after_and_before():
    g = melvin.Graph()
    for _ in range(15):
        g.feed("first then second then third then done")
    after = g.after("first then")
    assert after and after[0][0].startswith(b" second")
    assert abs(sum(w for _, w in g.after("first then", k=100)) - 1.0) < 1e-9
    # word patterns carry their leading space: mid-text the word is " second", after " then";
    # asked without the space, before() counts that form too
    before = g.before(" second")
    assert before and before[0][0].endswith(b"then")
    assert g.before("second") == before
    assert g.after("never seen pattern zzz") == [] or all(w >= 0 for _, w in g.after("zzz"))


def test_bytewise_prediction_follows_the_longest_byte_context():
    # Without hierarchy the last token is one byte; its busy context must not drown the longer
    # byte contexts (the interpolation runs by span): "abc" and "dbc" end alike, differ 3 bytes back.
    g = melvin.Graph(melvin.Limits(hierarchy=False))
    for _ in range(20):
        g.feed(b"abcx")
        g.feed(b"dbcy")
        g.feed(b"ecz")
    for prompt, want in ((b"abc", b"x"), (b"dbc", b"y"), (b"ec", b"z")):
        (tok, p), *_ = g.predict(prompt)
        assert tok == want and p > 0.8, (prompt, g.predict(prompt))
    assert g.generate(b"ab") == b"cx"


def test_before_weights_follow_counts():
    g = melvin.Graph(melvin.Limits(hierarchy=False))
    for _ in range(30):
        g.feed(b"ax")
    for _ in range(10):
        g.feed(b"bx")
    ranked = g.before(b"x")
    assert [tok for tok, _ in ranked[:2]] == [b"a", b"b"]
    assert ranked[0][1] == pytest.approx(0.75)


def test_confidence_is_reported_per_step():
    g = melvin.Graph()
    for _ in range(20):
        g.feed("the cat sat on the mat")
    out, conf = g.generate("the cat", return_confidence=True)
    assert out == b" sat on the mat"
    assert conf and all(0.0 < c <= 1.0 for c in conf)


def test_adaptive_stop_ends_where_confidence_collapses():
    g = melvin.Graph()
    for _ in range(20):
        g.feed("alpha beta gamma delta")
    for i in range(40):
        g.feed(f"delta {i} {i * 7 % 13} noise {i * 3}")
    full = g.generate("alpha", max_bytes=200)
    stopped, conf = g.generate("alpha", max_bytes=200, stop_ratio=0.3, return_confidence=True)
    assert full.startswith(b" beta gamma delta")
    assert stopped.startswith(b" beta gamma delta")
    assert len(stopped) <= len(full)


def test_stop_ratio_validated():
    g = melvin.Graph()
    with pytest.raises(ValueError):
        g.generate("x", stop_ratio=2.0)


def _recalls(g, prompt: str, expected: str) -> bool:
    got = g.generate(prompt, max_bytes=40).lstrip(b" ")
    w = expected.encode()
    return got.startswith(w) and (len(got) == len(w) or not got[len(w):len(w) + 1].isalnum())


@pytest.mark.parametrize("byte_context,hierarchy", [(None, True), ((1, 2, 4, 24), True),
                                                   (None, False)],
                         ids=["default", "with-1-byte-context", "bytewise"])
def test_next_word_recall_on_assoc(wiki_lines, byte_context, hierarchy):
    """A sentence seen once is recalled from its own long byte contexts, however differently the
    prompt is segmented from the training text (issue target: >= 90% of assoc.tsv). With a 1-byte
    context too (it only sharpens scoring: generation leaves it out), and without hierarchy."""
    import csv

    from conftest import CORPUS

    path = CORPUS / "assoc.tsv"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    rows = list(csv.DictReader(open(path), delimiter="\t"))
    g = melvin.Graph(melvin.Limits(byte_context=byte_context, hierarchy=hierarchy))
    for line in wiki_lines:
        g.feed(line)
    hits = sum(_recalls(g, r["prompt"], r["expected"]) for r in rows)
    assert hits >= 0.9 * len(rows), f"recall {hits}/{len(rows)}"


def test_sole_edges_are_found_as_their_contexts_grow(tmp_path):
    """A context's sole edge is read from its list, not the edge index; once the context has a
    second successor both are indexed. Every edge stays findable (check() looks each up) through
    training, pruning and a save/load, and what was learned is the same either way."""
    g = melvin.Graph(melvin.Limits(max_memory="256K"))
    rng = random.Random(5)
    words = ["alpha", "beta", "gamma", "delta"] + \
        ["".join(rng.choice("abcdefghij") for _ in range(5)) for _ in range(200)]
    for i in range(600):
        g.feed(" ".join(rng.choice(words) for _ in range(8)).encode())
        if i % 50 == 0:
            assert g.check()
    assert g.stats()["prunes"] > 0 and g.check()
    g.save(tmp_path / "g.mlv")
    h = melvin.load(tmp_path / "g.mlv")
    assert h.check()
    assert h.predict(b"alpha beta", k=5) == g.predict(b"alpha beta", k=5)
