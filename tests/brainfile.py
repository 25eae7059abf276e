"""Taking brain files apart and joining them again with correct checksums, so a test's damage
reaches the validation behind the checksums (tests of formats 3 and 4)."""
import struct
import zlib

import numpy as np

from melvin import persist

HEAD = struct.Struct("<8sII")
ENTRY = struct.Struct("<8sQQII")


def spans(buf: bytes) -> dict:
    """(offset, length) of each section of a (valid) brain, by name."""
    _, _, count = HEAD.unpack_from(buf, 0)
    out = {}
    for i in range(count):
        raw, offset, length, _, _ = ENTRY.unpack_from(buf, HEAD.size + i * ENTRY.size)
        out[raw.rstrip(b"\0").decode()] = (offset, length)
    return out


def split(buf: bytes) -> dict:
    """Sections of a (valid) brain, by name."""
    return {name: bytes(buf[o:o + n]) for name, (o, n) in spans(buf).items()}


def join(sections: dict, *, version=persist.VERSION, magic=b"MLVNBRN\n", count=None, fix=None,
         align=1) -> bytes:
    """A brain with the given sections and correct checksums (so only the content is hostile),
    each at an offset that is a multiple of align. fix(i, offset, length) may rewrite a table
    entry's offset/length."""
    names = list(sections)
    offset = HEAD.size + len(names) * ENTRY.size + 4
    table, body = [], []
    for i, name in enumerate(names):
        pad = -offset % align
        body.append(b"\0" * pad)
        offset += pad
        data = sections[name]
        off, length = offset, len(data)
        if fix is not None:
            off, length = fix(i, off, length)
        table.append(ENTRY.pack(name.encode().ljust(8, b"\0"), off, length, zlib.crc32(data), 0))
        body.append(data)
        offset += len(data)
    tb = b"".join(table)
    return b"".join([HEAD.pack(magic, version, len(names) if count is None else count), tb,
                     struct.pack("<I", zlib.crc32(tb))] + body)


def records(buf: bytes, name: str, dtype, edit, **join_args) -> bytes:
    """The brain with section `name`'s records (as dtype) changed in place by edit(array)."""
    s = split(buf)
    arr = np.frombuffer(s[name], dtype=dtype).copy()
    edit(arr)
    s[name] = arr.tobytes()
    return join(s, **join_args)


def sample_brain(lines):
    """The brain these tests take apart: 80 lines of wiki text, a binary episode on the sensor
    port, contexts of up to 4 tokens."""
    import melvin
    g = melvin.Graph(melvin.Limits(max_memory="32M", context_len=4), seed=7)
    for line in lines[:80]:
        g.feed(line)
    g.feed(b"\x00\xff binary \x80\x81", port=melvin.PORT_SENSOR)
    g.check()
    return g
