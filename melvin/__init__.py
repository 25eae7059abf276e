"""melvin: a byte-level learner that grows a bounded graph of patterns.

    import melvin
    g = melvin.Graph(melvin.Limits(max_memory="512M"))
    g.feed("hello world")
    g.generate("hello")
"""
import logging

from melvin.errors import CapExceeded, CorruptBrainError, InvariantError, MelvinError
from melvin.graph import PORT_AUDIO, PORT_IMAGE, PORT_SENSOR, PORT_TEXT, Graph
from melvin.limits import Limits, parse_size
from melvin.merge import merge
from melvin.persist import load

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"
__all__ = ["Graph", "Limits", "load", "merge", "parse_size", "MelvinError", "CapExceeded",
           "CorruptBrainError", "InvariantError", "PORT_TEXT", "PORT_AUDIO", "PORT_IMAGE",
           "PORT_SENSOR"]
