"""The melvin exception family."""


class MelvinError(Exception):
    """Base of every error melvin raises on purpose."""


class CapExceeded(MelvinError, MemoryError):
    """A hard cap from `Limits` would be exceeded; the graph is unchanged and still usable."""


class CorruptBrainError(MelvinError, ValueError):
    """A brain file is damaged, truncated, hostile or of an unknown format."""


class InvariantError(MelvinError):
    """`Graph.check()` found an internal inconsistency (a bug: please report it)."""
