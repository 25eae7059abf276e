"""The behaviour scenarios of DESIGN.md "Semantics the tests hold us to", each on a fresh Graph(),
with hierarchy (the default) and without (bytewise)."""
import pytest

import melvin


@pytest.fixture(params=[True, False], ids=["hierarchy", "bytewise"])
def make(request):
    return lambda: melvin.Graph(melvin.Limits(hierarchy=request.param))


def _train(make, sequences, times, check_every=1):
    """Feed `sequences` interleaved `times` times, calling check() after every `check_every`-th feed."""
    g = make()
    n = 0
    for _ in range(times):
        for seq in sequences:
            g.feed(seq)
            n += 1
            if n % check_every == 0:
                g.check()
    g.check()
    return g


def test_hello_world(make):
    g = _train(make, [b"hello world"], 5)
    assert g.generate(b"hello") == b" world"


def test_hello_world_then_there(make):
    g = make()
    for _ in range(5):
        g.feed(b"hello world")
        g.check()
    for _ in range(5):
        g.feed(b"hello there")
        g.check()
    assert g.generate(b"hello ") in (b"world", b"there")


def test_interleaved_four_sentences(make):
    g = _train(make, [b"hello world", b"hello friend", b"goodbye world", b"goodbye friend"], 50,
               check_every=10)
    assert g.generate(b"hello w") == b"orld"
    assert g.generate(b"hello f") == b"riend"
    assert g.generate(b"goodbye w") == b"orld"
    assert g.generate(b"goodbye f") == b"riend"


def test_catmeow_dogwoof(make):
    g = _train(make, [b"catmeow", b"dogwoof"], 50, check_every=10)
    assert g.generate(b"cat") == b"meow"
    assert g.generate(b"dog") == b"woof"


def test_go_left_go_right(make):
    g = _train(make, [b"go leftforest", b"go rightcave"], 40, check_every=10)
    assert g.generate(b"go left") == b"forest"
    assert g.generate(b"go right") == b"cave"


def test_the_cat_sat_the_dog_ran(make):
    g = _train(make, [b"the cat sat", b"the dog ran"], 100, check_every=10)
    assert g.generate(b"the cat") == b" sat"
    assert g.generate(b"the dog") == b" ran"


def test_abcdefgh(make):
    g = _train(make, [b"abcdefgh"], 200, check_every=10)
    assert g.generate(b"abcd") == b"efgh"


def test_first_then_second_then_third_then_done(make):
    g = _train(make, [b"first then second then third then done"], 15)
    assert g.generate(b"first then") == b" second then third then done"


def test_str_and_bytes_agree(make):
    a = _train(make, ["hello world"], 5)
    b = _train(make, [b"hello world"], 5)
    assert a.generate("hello") == b.generate(b"hello") == b" world"
    assert a.stats() == b.stats()
