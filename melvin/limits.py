"""Caps and knobs of a graph, with KenLM-style size parsing ("512M", "2G", "80%")."""
from __future__ import annotations

import dataclasses
import os
import re

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def physical_memory() -> int:
    """Bytes of physical RAM (falls back to 4 GiB where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4 << 30


def parse_size(value, field: str = "size") -> int:
    """Parse 123, "512M", "2G", "1.5G" or "80%" (of physical RAM) into bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{field}: must be positive, got {value}")
        return value
    if isinstance(value, float):
        raise ValueError(f"{field}: give bytes as an int or a string like '512M', got {value!r}")
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected an int or a string like '512M', got {type(value).__name__}")
    text = value.strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ValueError(f"{field}: cannot parse percentage {value!r}") from None
        if not 0 < pct <= 100:
            raise ValueError(f"{field}: percentage must be in (0, 100], got {value!r}")
        return int(physical_memory() * pct / 100)
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{field}: cannot parse size {value!r} (examples: 1048576, '512M', '2G', '80%')")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ValueError(f"{field}: must be positive, got {value!r}")
    return n


# Default byte contexts with hierarchy (tokens are words and phrases) and without (every token is
# one byte, so the byte contexts carry all the context): see Limits.byte_context.
BYTE_CONTEXT = (2, 4, 24)
BYTE_CONTEXT_BYTEWISE = (2, 3, 4, 5, 6, 8, 12, 24)

# (minimum, maximum) of every integer field; max_memory is parsed separately.
_RANGES = {
    "max_nodes": (512, 0xFFFFFFF0),
    "max_edges": (64, 0xFFFFFFF0),
    "max_payload": (2, 65535),
    "max_levels": (1, 255),
    "context_len": (1, 32),
    "hierarchy_min_count": (2, 1 << 30),
    "embedding_dims": (0, 64),
    "max_categories": (0, 65535),
    "max_transformers": (0, 1 << 30),
    "transformer_min_uses": (1, 1 << 30),
    "max_heads": (0, 64),
}


@dataclasses.dataclass(frozen=True)
class Limits:
    """Hard caps of a graph. Sizes accept ints (bytes) or strings: "512M", "2G", "80%".

    max_memory: the graph's own memory budget (every byte of its tables). Training that reaches it
        prunes (halves counts, drops what reaches zero) down to 70% of it instead of failing.
    max_nodes: patterns (256 bytes per port + STOP + hierarchy). At the cap, hierarchy stops forming.
    max_edges: context->token edges. Training that reaches it prunes down to 70% of it.
    max_payload: longest pattern, in bytes. max_levels: deepest hierarchy level.
    context_len: tokens of context the model conditions on (orders 1..context_len).
    byte_context: lengths of the byte-suffix contexts (the last n bytes, however they were
        segmented), interpolated with the token contexts by the bytes each spans; () disables
        them. Default (None): (2, 4, 24) with hierarchy, (2, 3, 4, 5, 6, 8, 12, 24) without.
        With hierarchy, (2, 4, 24): 2 and 4 bytes predict, 24 bytes remember -- a sentence seen once is
        recalled from its own 24-byte contexts (next-word recall on wiki 0.15 -> 0.935 against
        (3, 6); bits per byte 2.335 -> 2.305) at about 30% of training speed and 30% more memory.
        (3, 6) is the faster, forgetful choice. (1, 2, 4, 24) predicts better (held-out bits per
        byte 2.305 -> 2.285 on wiki; 9% more edges, ~4% slower; generation leaves the 1-byte
        context out, so recall stays above 0.9), but under very
        small budgets (128-160 KiB) it prunes sooner and forgets a phrase seen three times, which
        (2, 4, 24) keeps: not the default.
    hierarchy_min_count: how often a pair must be seen before it may fuse into one pattern.
    word_tokens: on the text port (PORT_TEXT) a pattern never spans a word boundary: it is an
        optional leading space, then a run of letters (bytes >= 0x80 count as letters, so UTF-8
        words stay whole) or of other symbols, or a single digit, as GPT-2's pre-tokenisation
        (with LLaMA's split digits) cuts text before BPE. Fusing pairs wherever they were frequent
        made tokens like "e the" and left rare fragments after them: wiki held-out 2.256 -> 2.114
        bits/byte (2.099 with the smoothing and heads retuned for it), next-word recall 0.935 ->
        0.94, generation precision 0.085 -> 0.111; big.txt at --max-memory 1G 1.874 -> 1.770,
        training as fast. Other ports (binary data) fuse freely. False is the free formation of
        earlier versions (brains saved by them load with True and keep their patterns).
    hierarchy: False keeps every token a single byte ("bytewise"): the best compression while
        the graph fits its budget (wiki held-out 2.055 bits/byte against 2.256 with hierarchy,
        next-word recall 0.955, a PPM-like byte model) at a fifth of the training speed (~1 MB/s
        against ~5), ~5x the edges per byte learned (so a budget prunes it early), and weaker
        cross-modal recall from the binary side (0.44).
    attention: attention heads over the episode's own last 128 tokens, mixed into predict and
        score: with hierarchy a copy head (every earlier token) and induction heads of orders
        1..max_heads-1 (what followed the last 1, 2, ... tokens earlier in this episode); without
        it, where tokens are bytes, induction heads of 3, 6, 12, 24... bytes. They carry what the
        text at hand is about, which the graph's contexts cannot: held-out bits per byte on wiki
        2.175 -> 2.099 (free patterns 2.305 -> 2.256, bytewise 2.093 -> 2.055), on big.txt
        (88 MB, a 582 MiB graph, free patterns) 1.890 -> 1.858, and scoring ~5-15% slower;
        nothing learned, nothing stored. Not in generation: next-word recall stays 0.94 with them.
    max_heads: attention heads; 0 is attention=False. Two (copy + order 1; bytewise 3 and 6
        bytes) give nearly all of it: the copy head alone 2.1285 on wiki, two 2.0989 (with free
        patterns: one 2.2776, two 2.2557, four 2.2556; big.txt 16 MB one 1.9896, two 1.9851,
        four 1.9855).
    embeddings: sparse embeddings and categories. A pattern's embedding is its successor
        profile: its embedding_dims strongest continuations, weighted by count, L2-normalised
        (Graph.embedding, Graph.similarity: cosine over sorted dims, O(embedding_dims)); it is
        read from the edges, so it is learned online with them and costs no memory. Each time a
        pattern's own context has seen 2, 4, 8 and 16 continuations it is placed in a category
        (online leader clustering: the closest category whose profile has a cosine of at least
        0.2, else a new one), and while it is that rarely seen its continuations are also
        counted in its category's context, one more back-off level between the short byte
        contexts and its own (Graph.category). A pattern seen a few times, or in a context new
        to it, so borrows what the patterns used like it continue with: wiki held-out
        2.0989 -> 2.0927 bits/byte, big.txt at --max-memory 1G 1.7599 -> 1.7551, training ~6%
        slower; next-word recall unchanged (generation leaves the category context out).
        Counting members' continuations for longer was no better (big.txt 4 MB: always 2.1390,
        up to 128 2.1351; 16 MB: up to 128 1.9256, 32 1.9245, 16 1.9246), nor were more
        categories (16 MB: 16384 1.9248, 4096 1.9246, 1024 1.9239, 256 1.9229, 64 1.9260).
    embedding_dims: non-zeros of an embedding (8, 16 or 32 scored the same; at most 64).
    max_categories: cap on categories (at most 65535); under a small max_memory fewer, so the
        table (~150 bytes each, never pruned) takes at most 1/16 of the budget.
    max_transformers, transformer_min_uses: caps of per-edge transformers; accepted and
        validated, but per-edge heads are not built: measured in tools/probe_mechanisms.py they
        lost to the episode-level heads above (wiki 2.3757 against 2.1419 bits/byte).
    """

    max_memory: int | str = "25%"
    max_nodes: int = 1 << 22
    max_edges: int = 1 << 30
    max_payload: int = 64
    max_levels: int = 16
    context_len: int = 1
    hierarchy_min_count: int = 2
    hierarchy: bool = True
    word_tokens: bool = True
    byte_context: tuple | int | None = None
    embedding_dims: int = 16
    max_categories: int = 256
    embeddings: bool = True
    max_transformers: int = 1 << 16
    transformer_min_uses: int = 32
    max_heads: int = 2
    attention: bool = True

    def __post_init__(self):
        object.__setattr__(self, "max_memory", parse_size(self.max_memory, "max_memory"))
        if self.max_memory < 1 << 16:
            raise ValueError(f"max_memory: at least 64K is needed, got {self.max_memory}")
        for name in ("hierarchy", "attention", "word_tokens", "embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        bc = self.byte_context
        if bc is None:
            bc = BYTE_CONTEXT if self.hierarchy else BYTE_CONTEXT_BYTEWISE
        if isinstance(bc, int) and not isinstance(bc, bool):
            bc = tuple(range(1, bc + 1))
        if not isinstance(bc, (tuple, list)) or len(bc) > 8 or \
                any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 64 for b in bc) or \
                list(bc) != sorted(set(bc)):
            raise ValueError(f"byte_context: up to 8 ascending lengths in [1, 64] (or an int n for "
                             f"1..n), got {self.byte_context!r}")
        object.__setattr__(self, "byte_context", tuple(bc))
        for name, (lo, hi) in _RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}: expected an int, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{name}: must be in [{lo}, {hi}], got {value}")

    def core_kwargs(self) -> dict:
        return dict(max_memory=self.max_memory, max_nodes=self.max_nodes, max_edges=self.max_edges,
                    max_payload=self.max_payload, max_levels=self.max_levels,
                    context_len=self.context_len,
                    form_min_count=self.hierarchy_min_count if self.hierarchy else 0xFFFFFFFF,
                    byte_orders=tuple(self.byte_context),
                    attention_heads=self.max_heads if self.attention else 0,
                    word_tokens=self.word_tokens,
                    embedding_dims=self.embedding_dims if self.embeddings else 0,
                    max_categories=self.max_categories)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Limits":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown Limits fields: {sorted(unknown)}")
        return cls(**data)
