"""Regenerate the seed corpora fuzz/corpus/{feed,ops,load,inputs}/seed-* (deterministic).

    python fuzz/make_seeds.py [--text FILE]

Seeds are small: real text lines (default: CPython's pydoc topics, which ship with every Python),
real brains from melvin.persist.dumps of small graphs, and compressed samples. Files named crash-*
(saved findings) are never touched.
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import lzma
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import melvin  # noqa: E402
from melvin import persist  # noqa: E402

import targets  # noqa: E402


def default_text() -> list[bytes]:
    from pydoc_data import topics

    lines = []
    for name in sorted(topics.topics)[:40]:
        lines.extend(x for x in topics.topics[name].encode().split(b"\n") if x.strip())
    return lines


def header(mem: int, edges: int, nodes_payload: int, ctx: int, levels: int) -> bytes:
    """The 6 limit bytes of targets.limits_from: mem 0..65535 (64K..2M), edges byte, ..."""
    return struct.pack(">H", mem) + bytes([edges, nodes_payload, ctx, levels])


HEADERS = [
    header(0, 0, 0x00, 0x00, 0),            # 64K, 64 edges, 512 nodes, payload 2, context 1
    header(0x2000, 16, 0x62, 0x0D, 3),      # ~300K, 320 edges, payload 8, context 2, bytes (3, 6)
    header(0xFFFF, 255, 0xEF, 0x13, 7),     # 2M, 4144 edges, 2432 nodes, payload 16, context 4
    header(0x0400, 4, 0x31, 0x26, 1),       # ~120K
]


def write(dirname: str, name: str, data: bytes):
    path = os.path.join(HERE, "corpus", dirname, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def feed_seeds(lines):
    text = b"\n".join(lines[:60])
    for i, h in enumerate(HEADERS):
        write("feed", f"seed-lines-{i}", h + bytes([i, ord("\n")]) + text[: 1500 * (i + 1)])
    write("feed", "seed-hello", HEADERS[0] + b"\x01\n" + b"hello world\nhello there\n" * 3)
    write("feed", "seed-ports", HEADERS[2] + b"\x05\n" + b"\x00text\n\x01audio\n\x02image\n" * 4)
    long_line = b" ".join(lines[:80]).replace(b"\n", b" ")[:12000]
    write("feed", "seed-long-line", HEADERS[0] + b"\x00\n" + long_line)
    write("feed", "seed-binary", HEADERS[3] + b"\x02\xff" + bytes(range(256)) * 4)


def chunk(data: bytes) -> bytes:
    data = data[:4095]
    if len(data) < 128:
        return bytes([len(data)]) + data
    return bytes([0x80 | len(data) >> 5, (len(data) & 31) << 3]) + data


def ops_seeds(lines):
    L = lines
    seqs = [
        # feed x3, generate, predict, prune, save/load, generate
        b"".join([b"\x00" + chunk(L[0]), b"\x00" + chunk(L[1]), b"\x22" + chunk(L[2][:60]),
                  b"\x03\x05\x40\x05", b"\x13" + chunk(L[2][:20]) + b"\x40\x03", b"\x85",
                  b"\x06", b"\x03\x03\x20\x02", b"\x0b"]),
        # multi-port feeds, damaged copies, bad arguments
        b"".join([b"\x11" + chunk(L[3]), b"\x21" + chunk(b"\x00\x01\x02" * 20), b"\x07\x00\x80",
                  b"\x17\x00\x40", b"\x08\x05", b"\x08\x0b", b"\x08\x11", b"\x06", b"\x0b"]),
        # fault injection, merge, generate loops
        b"".join([b"\x00" + chunk(L[4]), b"\x09\x03" + chunk(L[5]), b"\x09\x01" + chunk(L[6]),
                  b"\x0a" + chunk(L[7]), b"\xf4", b"\x45", b"\x06", b"\x03\x10\x80\x04"]),
    ]
    for i, h in enumerate(HEADERS):
        for j, seq in enumerate(seqs):
            write("ops", f"seed-{i}-{j}", h + seq)


def brains(lines):
    out = []
    lim = melvin.Limits(max_memory="64K", max_nodes=512, max_edges=64, max_payload=2)
    g = melvin.Graph(lim)
    out.append(("empty-64k", persist.dumps(g)))
    for _ in range(5):
        g.feed(b"hello world")
    out.append(("hello", persist.dumps(g)))
    lim = melvin.Limits(max_memory="256K", max_nodes=1024, max_edges=1024, max_payload=8,
                        context_len=3, byte_context=(2, 4))
    g = melvin.Graph(lim)
    for line in lines[:40]:
        g.feed(line)
    out.append(("pruned-256k", persist.dumps(g)))
    lim = melvin.Limits(max_memory="1M", max_nodes=1024, max_edges=2000, max_payload=16,
                        context_len=2, byte_context=())
    g = melvin.Graph(lim)
    for i, line in enumerate(lines[:20]):
        g.feed(line[:80], port=i % 3)
    out.append(("ports", persist.dumps(g)))
    return out


def load_seeds(lines):
    from melvin._core.store import crowd_limit
    for name, buf in brains(lines):
        write("load", f"seed-{name}", buf)
        write("load", f"seed-v4-{name}", persist.dumps(persist.loads(buf), mapped=True))
        if name == "ports":
            # every context key starting its probe at slot 0: refused as crowded, unless mutated
            crowded = crowded_keys(buf)
            write("load", f"seed-crowded-{name}", crowded)
            with crowd_limit(None):
                write("load", f"seed-v4-crowded-{name}",
                      persist.dumps(persist.loads(crowded), mapped=True))


def crowded_keys(buf: bytes) -> bytes:
    """The brain with its context keys replaced by 1, 2, 3 ... (checksums repaired)."""
    from melvin._core.core import CTX_DTYPE
    import numpy as np
    _, _, count = targets._HEAD.unpack_from(buf, 0)
    for i in range(count):
        at = targets._HEAD.size + i * targets._ENTRY.size
        raw, offset, length, _, _ = targets._ENTRY.unpack_from(buf, at)
        if raw.rstrip(b"\0") == b"contexts":
            keys = np.arange(1, length // CTX_DTYPE.itemsize + 1, dtype="<u8").tobytes()
            return targets.repair_checksums(buf[:offset] + keys + buf[offset + length:])
    raise ValueError("no contexts section")


def inputs_seeds(lines):
    text = b"\n".join(lines[:30]) + b"\n"
    paras = b"\n\n".join(b"\n".join(lines[i:i + 3]) for i in range(0, 24, 3)) + b"\n"
    kinds = {k: i for i, k in enumerate(targets._KINDS)}
    # kind, mode (split = mode % 3, bit 7: max_episode from the next byte, bits 2-3: raw mode)
    write("inputs", "seed-txt-lines", bytes([kinds[".txt"], 0x00, 0]) + text)
    write("inputs", "seed-txt-paragraphs", bytes([kinds[".txt"], 0x01, 0]) + paras)
    write("inputs", "seed-txt-documents-cap", bytes([kinds[".txt"], 0x82, 40]) + text[:800])
    write("inputs", "seed-lines-cap", bytes([kinds[".txt"], 0x80, 16]) + text[:600])
    write("inputs", "seed-gz", bytes([kinds[".gz"], 0x00, 0]) + text[:1000])
    write("inputs", "seed-bz2-paragraphs", bytes([kinds[".bz2"], 0x01, 0]) + paras[:1000])
    write("inputs", "seed-xz", bytes([kinds[".xz"], 0x80, 30]) + text[:700])
    write("inputs", "seed-zst", bytes([kinds[".zst"], 0x00, 0]) + text[:700])
    write("inputs", "seed-stdin", bytes([kinds["-"], 0x00, 0]) + text[:500])
    # raw compressed bytes (mode bits 2-3 = 2): real gz/bz2/xz streams as the file body
    write("inputs", "seed-raw-gz", bytes([kinds[".gz"], 0x08, 0]) + gzip.compress(text[:400], mtime=0))
    write("inputs", "seed-raw-bz2", bytes([kinds[".bz2"], 0x08, 0]) + bz2.compress(text[:400]))
    write("inputs", "seed-raw-xz", bytes([kinds[".xz"], 0x08, 0]) + lzma.compress(text[:400]))
    write("inputs", "seed-stdin-gz", bytes([kinds["-"], 0x08, 0]) + gzip.compress(text[:300], mtime=0))
    write("inputs", "seed-truncated-gz", bytes([kinds[".gz"], 0x0C, 0]) + text[:600])
    xml = (b'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">'
           b"<siteinfo><sitename>W</sitename><dbname>w</dbname><base>x</base><generator>g</generator>"
           b'<case>first-letter</case><namespaces><namespace key="0" case="first-letter" />'
           b"</namespaces></siteinfo>"
           b"<page><title>Cat</title><ns>0</ns><id>1</id><revision><id>2</id>"
           b"<timestamp>2020-01-01T00:00:00Z</timestamp><contributor><username>u</username><id>3</id>"
           b"</contributor><model>wikitext</model><format>text/x-wiki</format>"
           b"<text xml:space=\"preserve\">The '''cat''' is a [[mammal]].{{cite|x}}\n\nIt meows.</text>"
           b"<sha1>x</sha1></revision></page>"
           b"<page><title>Dog</title><ns>0</ns><id>4</id><redirect title=\"Hound\" />"
           b"<revision><id>5</id><timestamp>2020-01-01T00:00:00Z</timestamp>"
           b"<contributor><username>u</username><id>3</id></contributor><model>wikitext</model>"
           b"<format>text/x-wiki</format><text xml:space=\"preserve\">#REDIRECT [[Hound]]</text>"
           b"<sha1>y</sha1></revision></page></mediawiki>\n")
    write("inputs", "seed-wiki-xml", bytes([kinds[".xml"], 0x00, 0]) + xml)
    write("inputs", "seed-wiki-xml-gz", bytes([kinds[".xml.gz"], 0x01, 0]) + xml)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--text", help="a text file to take lines from")
    args = ap.parse_args()
    if args.text:
        with open(args.text, "rb") as f:
            lines = [x for x in f.read().split(b"\n") if x.strip()][:400]
    else:
        lines = default_text()
    feed_seeds(lines)
    ops_seeds(lines)
    load_seeds(lines)
    inputs_seeds(lines)
    for d in ("feed", "ops", "load", "inputs"):
        names = os.listdir(os.path.join(HERE, "corpus", d))
        size = sum(os.path.getsize(os.path.join(HERE, "corpus", d, n)) for n in names)
        print(f"{d}: {len(names)} files, {size} bytes")


if __name__ == "__main__":
    main()
