"""predict/score/distribution form one proper, frozen probability model (DESIGN.md "Metrics")."""
import math
import random

import pytest

import melvin

STOP = 256


@pytest.fixture(scope="module", params=[True, False], ids=["hierarchy", "bytewise"])
def trained(wiki_lines, request):
    # bytewise (hierarchy off) scores with its own smoothing and interleaves many byte contexts
    # with the one-byte token context: both must stay one proper distribution
    g = melvin.Graph(melvin.Limits(hierarchy=request.param))
    for i, line in enumerate(wiki_lines[:60]):
        g.feed(line)
        if i % 10 == 0:
            g.check()
    g.check()
    return g


def _random_prompts(lines, n, seed=1234):
    rng = random.Random(seed)
    # repeated tokens feed the attention heads; the long one wraps their window
    prompts = [b"", b"The ", b"April", b"\x00\xff\xfe", bytes(range(200, 256)),
               b"the cat and the cat and the ", b"April is the fourth month of the year. " * 20]
    for _ in range(n):
        line = rng.choice(lines)
        a = rng.randrange(len(line))
        prompts.append(line[a:a + rng.randint(1, 40)])
    return prompts


def _tokens(g, data):
    """Greedy segmentation of data as the model sees it: node ids, without the closing STOP."""
    return [t[0] for t in g._core.score_detail(data)[:-1]]


def _excluded(payloads, a, u):
    """True if greedy segmentation can never emit u right after a (some a + prefix-of-u is a node)."""
    if a == STOP or u == STOP:
        return False
    pa, pu = payloads[a], payloads[u]
    known = payloads.set
    return any(pa + pu[:j] in known for j in range(1, len(pu) + 1))


class _Payloads(list):
    def __init__(self, g):
        super().__init__(g._core.node_payload(v) for v in range(g.stats()["nodes"]))
        self.set = set(self[:STOP] + self[STOP + 1:])


def test_predict_shape(trained):
    for prompt in _random_prompts([b"hello world"], 0) + [b"hello", b"The first"]:
        for k in (0, 1, 3, 5, 50):
            out = trained.predict(prompt, k=k)
            assert isinstance(out, list)
            assert len(out) <= k
            for tok, p in out:
                assert isinstance(tok, bytes)
                assert isinstance(p, float)
                assert 0.0 < p <= 1.0
            probs = [p for _, p in out]
            assert probs == sorted(probs, reverse=True)
            assert sum(probs) <= 1.0 + 1e-9
            assert len({tok for tok, _ in out}) == len(out)


def test_predict_k_zero_and_default(trained):
    assert trained.predict(b"The", k=0) == []
    assert len(trained.predict(b"The")) == 5


def test_predict_matches_distribution(trained, wiki_lines):
    """predict's probabilities are the distribution's entries for the same tokens."""
    g = trained
    payloads = _Payloads(g)
    for prompt in _random_prompts(wiki_lines[:60], 15):
        dist = g._core.distribution(prompt)
        by_payload = {payloads[v]: dist[v] for v in range(len(dist))}
        by_payload[b""] = dist[STOP]
        top = sorted(dist, reverse=True)[:5]
        out = g.predict(prompt, k=5)
        for (tok, p), q in zip(out, top):
            assert p == pytest.approx(by_payload[tok], rel=1e-9, abs=1e-12), (prompt, tok)
            assert p == pytest.approx(q, rel=1e-9, abs=1e-12), (prompt, tok)


def test_distribution_is_proper(trained, wiki_lines):
    g = trained
    payloads = _Payloads(g)
    for prompt in _random_prompts(wiki_lines[:60], 25):
        dist = g._core.distribution(prompt)
        assert len(dist) == g.stats()["nodes"]
        assert abs(float(dist.sum()) - 1.0) < 1e-9, prompt
        assert (dist >= 0).all()
        toks = _tokens(g, prompt)
        a = toks[-1] if toks else STOP
        for v in range(len(dist)):
            # Only a token greedy segmentation can never produce after the prompt may get zero.
            if dist[v] <= 0:
                assert _excluded(payloads, a, v), (prompt, v, payloads[v])
            # Every single byte can always follow (after a token, a byte b is impossible only if
            # a+b is itself a pattern); the escape path reaches every byte otherwise.
        for b in range(256):
            if not _excluded(payloads, a, b):
                assert dist[b] > 0, (prompt, b)


def test_predict_all_tokens_sums_to_one(trained):
    """predict with k >= node count lists the whole next-token distribution."""
    n = trained.stats()["nodes"]
    for prompt in (b"", b"The", b"April is the fourth", b"zzzq"):
        out = trained.predict(prompt, k=n + 10)
        total = sum(p for _, p in out)
        assert total <= 1.0 + 1e-9
        assert total > 0.999, (prompt, total)


def test_score_detail_sums_to_score_bits(trained, heldout_lines):
    g = trained
    for line in heldout_lines[:10] + [b"x", b"\x00\x01\x02", b"hello world"]:
        detail = g._core.score_detail(line)
        assert detail[-1][0] == STOP
        assert sum(len(g._core.node_payload(v)) for v, *_ in detail) == len(line)
        total = sum(bits for _, bits, _, _ in detail)
        assert total == pytest.approx(g.score_bits(line), abs=1e-6)
        assert g.score(line) == pytest.approx(total / len(line), abs=1e-9)


def test_score_is_minus_log2_of_distribution(trained, heldout_lines):
    """Each token's code length is -log2 of the distribution after the bytes before it."""
    g = trained
    for line in heldout_lines[:6] + [b"hello world", b"The cat sat on the mat."]:
        line = line[:120]
        pos = 0
        for v, bits, hit, present in g._core.score_detail(line):
            dist = g._core.distribution(line[:pos])
            assert bits == pytest.approx(-math.log2(dist[v]), abs=1e-6), \
                (line[:pos], g._core.node_payload(v))
            assert hit >= 0 and present >= 0 and (present >= 1 or hit == 0)
            pos += len(g._core.node_payload(v))
        assert pos == len(line)


def test_score_of_unseen_bytes_is_finite(trained):
    for data in (bytes(range(256)), b"\x00" * 1000, b"\xff\xfe\xfd" * 50, "日本語テキスト".encode(),
                 bytes(random.Random(5).randrange(256) for _ in range(3000))):
        s = trained.score(data)
        assert math.isfinite(s) and s > 0
    fresh = melvin.Graph()
    assert math.isfinite(fresh.score(b"anything at all"))
    # an unseen port costs something finite too
    assert math.isfinite(trained.score(b"abc", port=7))


def test_score_rejects_empty(trained):
    with pytest.raises(ValueError):
        trained.score(b"")


def test_queries_leave_the_model_frozen(trained, heldout_lines):
    g = trained
    before = g.stats()
    state = g._core.export_state()
    for line in heldout_lines[:20]:
        g.score(line)
        g.score_bits(line)
        g.predict(line[:30], k=10)
        g.generate(line[:20], max_bytes=64)
        g._core.distribution(line[:15])
        g._core.score_detail(line[:50])
    g.generate(b"", max_bytes=500)
    g.predict(b"abc", port=9)      # unseen port: must not create it
    g.score(b"abc", port=9)
    g.generate(b"abc", port=9)
    assert g.stats() == before
    after = g._core.export_state()
    for key in ("nodes", "contexts", "edges"):
        assert (after[key] == state[key]).all(), key
    assert after["arena"] == state["arena"]
    assert after["counters"] == state["counters"]
    g.check()


def test_deterministic(wiki_lines):
    outs = []
    for _ in range(2):
        g = melvin.Graph(seed=0)
        for line in wiki_lines[:20]:
            g.feed(line)
        outs.append((g.stats(), g.generate(b"The "), g.predict(b"April", k=7),
                     g.score(wiki_lines[30])))
    assert outs[0] == outs[1]


def test_generate_confidence_and_limits(trained):
    out, conf = trained.generate(b"April", return_confidence=True, max_bytes=40)
    assert isinstance(out, bytes) and len(out) <= 40
    assert all(0.0 < c <= 1.0 for c in conf)
    assert trained.generate(b"April", max_bytes=0) == b""
    assert len(trained.generate(b"April", max_bytes=3)) <= 3
    # an impossible confidence requirement stops generation at once (no step reaches it)
    strict = trained.generate(b"April", min_confidence=1.0)
    assert len(strict) <= len(trained.generate(b"April"))


def test_sorted_exclusion_ranges_equal_the_walk(wiki_lines):
    """Busy contexts answer exclusion sums from sorted successor ranges: the same doubles as
    walking their lists, before and after the graph learns more (the scratch is rebuilt)."""
    from melvin._core import model
    from melvin.persist import dumps, loads

    g = melvin.Graph()
    for line in wiki_lines[:300]:
        g.feed(line)
    walk, ranges = loads(dumps(g)), loads(dumps(g))
    held = wiki_lines[300:360]
    prompts = _random_prompts(held, 30)
    default = model._set_excl_min(0xFFFFFFFF)
    try:
        for step in range(2):
            model._set_excl_min(0xFFFFFFFF)
            want = [walk.score_bits(x) for x in held] + [walk.predict(p, k=8) for p in prompts]
            model._set_excl_min(2)
            got = [ranges.score_bits(x) for x in held] + [ranges.predict(p, k=8) for p in prompts]
            assert ranges._core._excl_held > 0
            assert got == want
            for x in held[:10]:
                walk.feed(x)
                ranges.feed(x)
    finally:
        model._set_excl_min(default)



def _byte_walk_choice(core, cand):
    """Reference for generation's greedy choice (the Python it replaced): the candidates'
    payloads walked as a trie from the first byte; at each prefix stop at the token spelling it
    exactly (STOP first) if it is at least as probable as the heaviest longer branch, else follow
    that branch (equal masses: the smaller byte)."""
    group = sorted((core.node_payload(d), d, p) for d, p in cand.items() if d != STOP)
    depth, mass = 0, sum(x[2] for x in group)
    exact = (STOP, cand[STOP]) if STOP in cand else (None, -1.0)
    while True:
        branches = {}
        for item in group:
            if len(item[0]) > depth:
                branches.setdefault(item[0][depth], []).append(item)
        if not branches:
            break
        sub_mass, byte = min((-sum(x[2] for x in items), b) for b, items in branches.items())
        if exact[0] is not None and exact[1] >= -sub_mass:
            break
        group, mass, depth = branches[byte], -sub_mass, depth + 1
        exact = (group[0][1], group[0][2]) if len(group[0][0]) == depth else (None, -1.0)
    if exact[0] is None:
        return None, 0.0
    return exact[0], min(1.0, exact[1] if exact[0] == STOP else mass)


@pytest.mark.parametrize("hierarchy", [True, False], ids=["hierarchy", "bytewise"])
def test_generation_candidates_in_one_walk_equal_prob_of(wiki_lines, hierarchy):
    """Generation gathers every candidate's probability in one walk of each context's
    successors (from the sorted copies of busy contexts, or the lists): prob_of's interpolation,
    summed in another order. The greedy choice walks their payloads through the trie: the same
    token and probability as the byte walk over sorted payloads it replaced."""
    from melvin._core import model
    from melvin.persist import dumps, loads

    g = melvin.Graph(melvin.Limits(hierarchy=hierarchy))
    for line in wiki_lines[:300]:
        g.feed(line)
    g = loads(dumps(g))                   # frozen: busy contexts get sorted copies at once
    prompts = _random_prompts(wiki_lines[300:360], 40)
    default = model._set_excl_min(0xFFFFFFFF)
    try:
        answers = {}
        for excl_min in (0xFFFFFFFF, 2):
            model._set_excl_min(excl_min)
            answers[excl_min] = [g.generate(p, max_bytes=40, return_confidence=True)
                                 for p in prompts]
            checked = 0
            for p in prompts:
                cand, reference, best, bp = g._core._recall_step(p)
                assert cand.keys() == reference.keys()
                for d, prob in cand.items():
                    assert prob == pytest.approx(reference[d], rel=1e-12, abs=0.0)
                want, want_p = _byte_walk_choice(g._core, cand)
                assert best == want
                assert bp == pytest.approx(want_p, rel=1e-12, abs=0.0)
                checked += len(cand) > 1
            assert checked > len(prompts) // 2
        assert g._core._excl_held > 0
    finally:
        model._set_excl_min(default)
    # the same text; confidences sum the same candidates in another order
    for (out, conf), (want, want_conf) in zip(answers[2], answers[0xFFFFFFFF]):
        assert out == want
        assert conf == pytest.approx(want_conf, rel=1e-12, abs=0.0)

def test_spelling_shares_evidence_between_tokens_with_a_common_prefix():
    """Scoring spells a token byte by byte: ' cap' never followed 'the', but tokens starting with
    ' ca' did, so it costs far less there than ' dog', which is as frequent overall (unspelled,
    both would be the same unseen token: equal bits)."""
    g = melvin.Graph()
    for _ in range(5):
        for line in (b"the cat sat", b"the car sat", b"the cab sat", b"a dog ran", b"a cap ran",
                     b"my dog", b"my cap"):
            g.feed(line)
    bits = {}
    for text in (b"the cap sat", b"the dog sat"):
        for v, b, *_ in g._core.score_detail(text):
            bits[g._core.node_payload(v)] = b
    # 2.96 against 5.99 bits: over four times as probable (the margin moves with the smoothing)
    assert bits[b" cap"] < bits[b" dog"] - 2
    assert g.score_bits(b"the cap sat") < g.score_bits(b"the dog sat") - 2
    dist = g._core.distribution(b"the ")
    assert abs(float(dist.sum()) - 1.0) < 1e-9


def test_spelled_distribution_is_proper_across_ports():
    """With port markers and two ports' tries, every next-token distribution still sums to 1,
    and predict's top tokens are its largest entries on the prompt's port."""
    rng = random.Random(5)
    g = melvin.Graph()
    pairs = [(b"word%d" % i, bytes(rng.randrange(256) for _ in range(16))) for i in range(20)]
    for _ in range(3):
        for text, blob in pairs:
            g.associate({melvin.PORT_TEXT: text, melvin.PORT_AUDIO: blob})
            g.feed(text + b" and more text")
    for prompt, port in ((b"word3", melvin.PORT_TEXT), (b"", melvin.PORT_TEXT),
                         (pairs[2][1][:5], melvin.PORT_AUDIO), (b"", melvin.PORT_AUDIO),
                         (b"word1 and", melvin.PORT_TEXT)):
        dist = g._core.distribution(prompt, port)
        assert abs(float(dist.sum()) - 1.0) < 1e-9, (prompt, port)
        assert (dist >= 0).all()
        top = g.predict(prompt, k=3, port=port)
        assert len(top) == 3
        for tok, p in top:
            assert p > 0 and any(abs(p - q) < 1e-12 for q in dist), (prompt, tok)
