"""Limits: KenLM-style size parsing and validation that names the offending field."""
import pytest

import melvin
from melvin.limits import parse_size, physical_memory


@pytest.mark.parametrize("text, expected", [
    ("512M", 512 << 20),
    ("2G", 2 << 30),
    ("1.5G", int(1.5 * (1 << 30))),
    ("64K", 64 << 10),
    ("100000", 100000),
    (" 3M ", 3 << 20),
    ("1T", 1 << 40),
    ("512MB", 512 << 20),
    ("2GiB", 2 << 30),
    ("512m", 512 << 20),
    (1 << 20, 1 << 20),
    (123456789, 123456789),
])
def test_parse_sizes(text, expected):
    assert parse_size(text) == expected
    assert melvin.Limits(max_memory=text).max_memory == expected


@pytest.mark.parametrize("pct", ["80%", "25%", "100%", "0.5%"])
def test_percent_of_physical_memory(pct):
    expected = int(physical_memory() * float(pct[:-1]) / 100)
    assert parse_size(pct) == expected
    assert melvin.Limits(max_memory=pct).max_memory == expected


def test_defaults_valid():
    lim = melvin.Limits()
    assert isinstance(lim.max_memory, int) and lim.max_memory >= 1 << 16
    assert lim.max_memory == int(physical_memory() * 0.25)
    g = melvin.Graph(lim)
    g.feed(b"hello")
    g.check()
    assert melvin.Limits.from_dict(lim.to_dict()) == lim


def test_integer_fields_accept_ints():
    lim = melvin.Limits(max_memory="4M", max_nodes=1000, max_edges=5000, max_payload=8,
                        max_levels=3, context_len=4, byte_context=3, embedding_dims=0)
    assert lim.byte_context == (1, 2, 3)
    assert melvin.Limits(byte_context=()).byte_context == ()
    g = melvin.Graph(lim)
    g.feed(b"some text")
    g.check()


@pytest.mark.parametrize("kwargs, field", [
    (dict(max_memory="abc"), "max_memory"),
    (dict(max_memory=True), "max_memory"),
    (dict(max_memory=0), "max_memory"),
    (dict(max_memory=-5), "max_memory"),
    (dict(max_memory="-1G"), "max_memory"),
    (dict(max_memory="0%"), "max_memory"),
    (dict(max_memory="150%"), "max_memory"),
    (dict(max_memory="x%"), "max_memory"),
    (dict(max_memory=1.5e9), "max_memory"),
    (dict(max_memory=None), "max_memory"),
    (dict(max_memory="1K"), "max_memory"),          # below the 64K floor
    (dict(max_memory="5Q"), "max_memory"),
    (dict(max_nodes=-1), "max_nodes"),
    (dict(max_nodes=10), "max_nodes"),
    (dict(max_nodes="many"), "max_nodes"),
    (dict(max_nodes=True), "max_nodes"),
    (dict(max_edges=0), "max_edges"),
    (dict(max_edges=2.5), "max_edges"),
    (dict(context_len=0), "context_len"),
    (dict(context_len=33), "context_len"),
    (dict(max_payload=1), "max_payload"),
    (dict(max_payload=70000), "max_payload"),
    (dict(max_levels=0), "max_levels"),
    (dict(byte_context=(6, 3)), "byte_context"),
    (dict(byte_context=(3, 3)), "byte_context"),
    (dict(byte_context=(0,)), "byte_context"),
    (dict(byte_context=(65,)), "byte_context"),
    (dict(byte_context="3"), "byte_context"),
    (dict(byte_context=tuple(range(1, 10))), "byte_context"),
    (dict(hierarchy_min_count=1), "hierarchy_min_count"),
    (dict(embedding_dims=-1), "embedding_dims"),
    (dict(max_heads=65), "max_heads"),
    (dict(transformer_min_uses=0), "transformer_min_uses"),
    (dict(attention=1), "attention"),
    (dict(hierarchy="yes"), "hierarchy"),
])
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError) as info:
        melvin.Limits(**kwargs)
    assert field in str(info.value)


def test_unknown_field_from_dict():
    with pytest.raises(ValueError, match="bogus"):
        melvin.Limits.from_dict({"bogus": 1})
    with pytest.raises(TypeError):
        melvin.Limits(bogus=1)


@pytest.mark.parametrize("bad", ["x", 512, {"max_memory": "1M"}, object()])
def test_graph_rejects_non_limits(bad):
    with pytest.raises(TypeError):
        melvin.Graph(limits=bad)


@pytest.mark.parametrize("seed", ["0", 1.0, True, None])
def test_graph_rejects_bad_seed(seed):
    with pytest.raises(TypeError):
        melvin.Graph(seed=seed)


def test_limits_frozen():
    lim = melvin.Limits()
    with pytest.raises(Exception):
        lim.max_memory = 5


def test_prune_target_parsed():
    g = melvin.Graph()
    g.feed(b"hello world")
    g.prune("1M")
    with pytest.raises(ValueError, match="target_bytes"):
        g.prune("lots")
    with pytest.raises(ValueError, match="target_bytes"):
        g.prune(-1)
