"""`Graph`: the public object. A thin layer over the compiled core that validates arguments."""
from __future__ import annotations

import logging
import os
import threading

from melvin._core.core import Core
from melvin.errors import MelvinError
from melvin.limits import Limits

log = logging.getLogger(__name__)

PORT_TEXT = 0
PORT_AUDIO = 1
PORT_IMAGE = 2
PORT_SENSOR = 3


def _as_bytes(data, what: str = "data") -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data) if not isinstance(data, bytes) else data
    raise TypeError(f"{what} must be bytes or str, got {type(data).__name__}")


def _port(port) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 255:
        raise ValueError(f"port must be an int in [0, 255], got {port!r}")
    return port


class Graph:
    """A growing graph of byte patterns that learns what follows what.

    >>> g = Graph()
    >>> for _ in range(5):
    ...     g.feed("hello world")
    >>> g.generate("hello")
    b' world'

    A Graph may be shared between threads: its calls into the core take turns (each holds the
    graph's lock: the core releases the GIL while it learns and queries, and both write the
    graph's tables, queries their scratch); different graphs learn and answer in parallel.
    """

    def __init__(self, limits: Limits | None = None, seed: int = 0, *, _core: Core | None = None):
        if limits is None:
            limits = Limits()
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a melvin.Limits, got {type(limits).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.limits = limits
        # Every decision is deterministic (payload-derived hashes); the seed is recorded for the
        # randomised mechanisms and for provenance.
        self.seed = seed
        self._core = _core if _core is not None else Core(**limits.core_kwargs())
        # Reentrant: save and merge call other methods of the graph while they hold it.
        self._lock = threading.RLock()

    def feed(self, data, port: int = PORT_TEXT) -> None:
        """Learn one episode: context starts empty and the sequence ends with a learned STOP."""
        data, port = _as_bytes(data), _port(port)
        with self._lock:
            self._core.feed(data, port)

    def _feed_batch(self, episodes: list, port: int = PORT_TEXT) -> list:
        """Learn a list of bytes episodes in one call into the core (the training loops' path; see
        Core.feed_many). No lock: the caller is the graph's only user. An episode the core refuses with a MelvinError is left
        unlearned, as feed leaves it, and the rest are still learned. Returns (index, error) of
        each refused episode."""
        refused = []
        start = 0
        while start < len(episodes):
            try:
                self._core.feed_many(episodes[start:] if start else episodes, port)
                break
            except MelvinError as exc:
                at = start + getattr(exc, "learned", 0)
                refused.append((at, exc))
                start = at + 1
        return refused

    def associate(self, streams: dict) -> None:
        """Learn one multi-port episode, e.g. {PORT_TEXT: b"dog", PORT_AUDIO: b"..."}: every stream
        is learned on its own port, bridged to every other, so generate(prompt, port=A,
        out_port=B) recalls what was associated on B. Same bytes on different ports are different
        patterns."""
        if not isinstance(streams, dict) or not streams:
            raise TypeError("associate takes a non-empty dict {port: bytes}")
        items = sorted((_port(p), _as_bytes(d, f"stream on port {p}")) for p, d in streams.items())
        with self._lock:                 # one episode: no other call learns in between
            if len(items) == 1:
                self._core.feed(items[0][1], items[0][0])
                return
            for pa, a in items:
                for pb, b in items:
                    if pa != pb:
                        self._core.associate_pair(a, pa, b, pb)

    def generate(self, prompt=b"", port: int = PORT_TEXT, *, out_port: int | None = None,
                 max_bytes: int = 256, min_confidence: float = 0.0, stop_ratio: float = 0.0,
                 return_confidence: bool = False):
        """Deterministic greedy continuation of the prompt (the continuation only). Stops at STOP,
        at a loop, when the best step's probability is below min_confidence, or at max_bytes.
        With out_port, the prompt is read on `port` and the continuation produced on `out_port`
        (cross-modal recall of what associate() bridged). stop_ratio > 0 also stops at a step whose
        confidence is below stop_ratio times the geometric mean of the steps before it (the
        adaptive threshold; measured by tools/eval.py). return_confidence adds the per-step
        confidences (the probability support of each step)."""
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative int, got {max_bytes!r}")
        if not 0.0 <= float(min_confidence) <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence!r}")
        if not 0.0 <= float(stop_ratio) <= 1.0:
            raise ValueError(f"stop_ratio must be in [0, 1], got {stop_ratio!r}")
        prompt, port = _as_bytes(prompt, "prompt"), _port(port)
        out_port = -1 if out_port is None else _port(out_port)
        with self._lock:
            out, conf = self._core.generate(prompt, port, max_bytes, float(min_confidence),
                                            out_port, float(stop_ratio))
        return (out, conf) if return_confidence else out

    def predict(self, prompt=b"", k: int = 5, port: int = PORT_TEXT):
        """The k most probable next tokens after the prompt as (token, probability), highest first.
        Probabilities come from one proper distribution over every node and STOP (shown as b""):
        the graph's, with the attention heads over the prompt's own tokens mixed in
        (Limits.attention)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative int, got {k!r}")
        prompt, port = _as_bytes(prompt, "prompt"), _port(port)
        with self._lock:
            return self._core.predict(prompt, k, port)

    def after(self, pattern, k: int = 5, port: int = PORT_TEXT):
        """What usually follows `pattern`: [(token, weight)], weights from counts and recency
        (older evidence halves every 64 x 65,536 learned tokens), summing to 1 over all."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative int, got {k!r}")
        pattern, port = _as_bytes(pattern, "pattern"), _port(port)
        with self._lock:
            return self._core.after(pattern, k, port)

    def before(self, pattern, k: int = 5, port: int = PORT_TEXT):
        """What usually precedes `pattern` (or its first token): [(token, weight)] as in after()."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative int, got {k!r}")
        pattern, port = _as_bytes(pattern, "pattern"), _port(port)
        with self._lock:
            return self._core.before(pattern, k, port)

    def embedding(self, pattern, port: int = PORT_TEXT) -> dict:
        """The pattern's sparse embedding, {token: weight}: its Limits.embedding_dims strongest
        continuations, weighted by count and L2-normalised (a successor profile, learned with the
        edges). {} if the pattern is not a node (with word patterns mid-text words carry their
        leading space: b" cat") or nothing has followed it yet."""
        pattern, port = _as_bytes(pattern, "pattern"), _port(port)
        with self._lock:
            return self._core.embedding(pattern, port)

    def similarity(self, a, b, port: int = PORT_TEXT) -> float:
        """Cosine of two patterns' embeddings, in [0, 1] (0 if either has none): patterns used
        alike ("cat", "dog" in "the _ sat") come close."""
        a, b, port = _as_bytes(a, "a"), _as_bytes(b, "b"), _port(port)
        with self._lock:
            return self._core.similarity(a, b, port)

    def category(self, pattern, port: int = PORT_TEXT):
        """The members of the pattern's category (itself included), most seen first; None if it
        has none (embeddings off, or seen followed by something fewer than twice)."""
        pattern, port = _as_bytes(pattern, "pattern"), _port(port)
        with self._lock:
            return self._core.category(pattern, port)

    def score(self, data, port: int = PORT_TEXT) -> float:
        """Bits per byte of `data` as one episode (its tokens and the closing STOP) under the
        frozen model: an honest code length, comparable with compressors. Each token is predicted
        as predict() would after the bytes before it (the attention heads read those; nothing is
        learned)."""
        data = _as_bytes(data)
        if not data:
            raise ValueError("score needs at least one byte")
        port = _port(port)
        with self._lock:
            return self._core.score_bits(data, port) / len(data)

    def score_bits(self, data, port: int = PORT_TEXT) -> float:
        """Total code length in bits of one episode (for summing over many episodes)."""
        data, port = _as_bytes(data), _port(port)
        with self._lock:
            return self._core.score_bits(data, port)

    def stats(self) -> dict:
        with self._lock:
            s = self._core.stats()
        s["transformers"] = 0
        s["embeddings"] = s.pop("categorized_nodes")    # nodes placed by their embedding
        s["bytes_per_edge"] = s["memory_bytes"] / s["edges"] if s["edges"] else None
        s["max_memory"] = self.limits.max_memory
        return s

    def check(self) -> bool:
        """Verify every internal invariant; raises melvin.InvariantError."""
        with self._lock:
            return self._core.check()

    def prune(self, target_bytes) -> dict:
        """Shed the least used structure (age counts, drop zeros) until memory <= target_bytes."""
        from melvin.limits import parse_size
        target = parse_size(target_bytes, "target_bytes")
        with self._lock:
            before = self._core.stats()
            self._core.prune(target)
            after = self._core.stats()
        log.info("pruned %d -> %d bytes", before["memory_bytes"], after["memory_bytes"])
        return {k: before[k] - after[k] for k in ("nodes", "contexts", "edges", "memory_bytes")}

    def save(self, path, *, mapped: bool = False) -> None:
        """Write the brain atomically (temp file, fsync, rename). mapped: format 4, which
        melvin.load maps and uses in place (faster to load, ~2.3x larger; see melvin.persist)."""
        from melvin.persist import save
        save(self, os.fspath(path), mapped=mapped)   # persist.write holds the lock while it reads

    def __reduce__(self):
        """Pickling (multiprocessing, copy.deepcopy) goes through the brain format: the bytes
        Graph.save would write, loaded back (and validated) by melvin.persist.loads."""
        from melvin.persist import dumps, loads
        return loads, (dumps(self),)       # dumps holds the lock while it reads

    def __repr__(self):
        with self._lock:
            s = self._core.stats()
        return f"<melvin.Graph nodes={s['nodes']} edges={s['edges']} memory={s['memory_bytes']}>"
