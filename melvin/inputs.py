"""Training inputs: files, directories, stdin, compressed files and Wikipedia XML dumps, read as a
stream of episodes (bytes) in bounded memory.

    from melvin.inputs import collect_sources, Reader
    for source in collect_sources(["corpus/", "extra.txt.gz", "enwiki.xml.bz2"]):
        reader = Reader(source, split="lines")
        for episode in reader:
            graph.feed(episode)
            reader.position          # where to resume after this episode (JSON-able)

Sources
    A path is read as it is (a named pipe too); a directory is walked recursively, its regular files
    sorted by path (names starting with "." are skipped); "-" is standard input. ``.gz``, ``.bz2``, ``.xz`` and ``.zst`` files are
    decompressed on the fly (``.zst`` needs the optional ``zstandard`` package); stdin is sniffed for
    the same formats by its magic bytes. A name ending in ``.xml`` (optionally compressed, e.g.
    ``.xml.bz2``) is a MediaWiki XML dump: its articles (namespace 0, redirects skipped) are turned
    into plain text with ``mwxml`` + ``mwparserfromhell`` (optional packages).

Splits (what one episode, i.e. one ``Graph.feed`` call, is)
    lines       each line without its ``\\n`` (a ``\\r`` before it is kept, as tools/bench.py does);
                an empty line is an empty episode (blank lines are text too: held-out scoring, one
                episode per line, counts them; 88 MB under 1G: 2.0548 -> 2.0266 bits/byte, measured
                with the whole-token scoring of the time).
    paragraphs  maximal runs of non-blank lines, joined with their inner newlines, without the final
                one; a blank line is one holding only spaces, tabs or ``\\r``.
    documents   a whole file, or one Wikipedia article; empty documents are skipped.
    Any episode longer than ``max_episode`` bytes is cut into consecutive pieces of exactly that size
    (the default, 128 MiB, lets a 100 MB line be one episode while bounding memory). Cuts are
    measured from the episode's start, so resuming from any piece boundary reproduces them.

Positions
    ``Reader.position`` is where the reader stands after the last episode it yielded, as a dict
    ``{"item", "offset", "line_start", "consumed"}``: ``item`` is the article index of a Wikipedia
    dump (0 otherwise), ``offset`` the byte offset in the (decompressed) text stream of that item,
    ``line_start`` whether that offset begins a line, and ``consumed`` the input bytes consumed so
    far (decompressed text bytes, delimiters included; for a dump, article plain-text bytes).
    ``Reader(source, split, start=position)`` continues exactly there (plain files seek; compressed
    files decompress and discard up to the offset; dumps skip whole articles without parsing them).
    ``Reader.raw_position`` is the byte position in the raw (compressed) input, for progress bars.

Errors
    Missing or unreadable paths, corrupt compressed data and malformed XML raise ``InputError``
    (a ``MelvinError``), naming the input. ``collect_sources(..., skip_bad=True)`` logs a warning and
    leaves bad paths out instead; a reader failing mid-stream is the caller's to skip.
"""
from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import io
import logging
import lzma
import os
import re
import stat
import sys
import zlib

from melvin.errors import MelvinError

log = logging.getLogger(__name__)

SPLITS = ("lines", "paragraphs", "documents")
DEFAULT_MAX_EPISODE = 128 << 20
CHUNK = 1 << 20

_SUFFIXES = {".gz": "gz", ".gzip": "gz", ".bz2": "bz2", ".xz": "xz", ".lzma": "xz", ".zst": "zst",
             ".zstd": "zst"}
_MAGIC = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zst"))
_BLANK = b" \t\r\n\x0b\x0c"


class InputError(MelvinError):
    """A training input is missing, unreadable, or not what its name says (corrupt compressed data,
    malformed XML). The message names the input."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One input stream. path is "-" for standard input."""

    path: str
    compression: str | None = None      # "gz", "bz2", "xz", "zst" or None
    wiki: bool = False                  # a MediaWiki XML dump
    size: int | None = None             # bytes of the raw file (None for stdin, pipes, devices)

    @property
    def name(self) -> str:
        return "<stdin>" if self.path == "-" else self.path

    @property
    def is_stdin(self) -> bool:
        return self.path == "-"

    @property
    def seekable(self) -> bool:
        """A regular file: it can be fingerprinted and resumed (stdin and pipes cannot)."""
        return self.size is not None


def source_for(path: str) -> Source:
    """Classify one file path by its name (it is not opened). "-" is stdin."""
    if path == "-":
        return Source("-")
    base = os.path.basename(path).lower()
    stem, ext = os.path.splitext(base)
    compression = _SUFFIXES.get(ext)
    if compression is None:
        stem = base
    wiki = stem.endswith(".xml")
    try:
        st = os.stat(path)
        size = st.st_size if stat.S_ISREG(st.st_mode) else None
    except OSError:
        size = None
    return Source(path, compression, wiki, size)


def _walk(root: str) -> list[str]:
    """Regular files under root, sorted by path; names starting with "." are skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise_walk_error):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not name.startswith(".") and os.path.isfile(path):
                out.append(path)
    return sorted(out, key=lambda p: os.path.relpath(p, root).split(os.sep))


def _raise_walk_error(exc: OSError):
    raise InputError(f"cannot read directory {exc.filename}: {exc.strerror or exc}")


def _bad(msg: str, skip_bad: bool, skipped: list | None):
    if not skip_bad:
        raise InputError(msg)
    log.warning("skipping bad input: %s", msg)
    if skipped is not None:
        skipped.append(msg)


def collect_sources(paths, *, skip_bad: bool = False, exclude=(), skipped: list | None = None) -> list[Source]:
    """Expand paths (files, directories, "-") into the ordered list of sources to read.

    Directories are walked recursively (regular files, sorted by path: components compared in
    order), skipping names that start with "." and any
    path in ``exclude`` (e.g. the brain being written). Missing or unreadable paths raise
    InputError, or with skip_bad=True are logged, appended to ``skipped`` and left out."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    excluded = {os.path.realpath(os.fspath(p)) for p in exclude}
    sources: list[Source] = []
    stdin_seen = False
    for raw in paths:
        path = os.fspath(raw)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if path == "-":
            if stdin_seen:
                raise InputError("standard input ('-') can be given only once")
            stdin_seen = True
            sources.append(Source("-"))
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            _bad(f"{path}: no such file or directory", skip_bad, skipped)
            continue
        except OSError as exc:
            _bad(f"{path}: cannot access: {exc.strerror or exc}", skip_bad, skipped)
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                files = _walk(path)
            except InputError as exc:
                _bad(str(exc), skip_bad, skipped)
                continue
            if not files:
                log.warning("directory %s holds no files", path)
        else:
            files = [path]
        for f in files:
            if os.path.realpath(f) in excluded:
                continue
            if not os.access(f, os.R_OK):
                _bad(f"{f}: permission denied", skip_bad, skipped)
                continue
            sources.append(source_for(f))
    return sources


def fingerprint(path: str, edge: int = 1 << 20) -> dict:
    """Size and a content fingerprint: sha256 of the size, the first and the last `edge` bytes.
    Cheap on any file size; catches appends, truncation, and edits near either end."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            h = hashlib.sha256(str(size).encode() + b"\0")
            h.update(f.read(edge))
            if size > edge:
                f.seek(max(edge, size - edge))
                h.update(f.read(edge))
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return {"size": size, "fingerprint": "sha256:" + h.hexdigest()}


def _zstd():
    try:
        import zstandard
    except ImportError:
        raise InputError("reading .zst input needs the optional package 'zstandard' "
                         "(pip install 'melvin[train]' or pip install zstandard)") from None
    return zstandard


_DECODE_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)


def _decode_errors():
    errors = _DECODE_ERRORS
    try:
        import zstandard
        errors = errors + (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


class _Counting(io.RawIOBase):
    """A raw reader that counts the bytes it hands out: the raw position of stdin or of a
    compressed file, for progress."""

    def __init__(self, f, start: int = 0):
        self._f = f
        self.count = start

    def readable(self):
        return True

    def readinto(self, b):
        n = self._f.readinto(b)
        if n:
            self.count += n
        return n


class _LZMAReader(io.RawIOBase):
    """.xz/.lzma (concatenated streams) under a decoder memory limit: LZMAFile takes whatever a
    header asks, and a 68-byte legacy header can ask for a 4 GiB dictionary (a fuzz finding).
    Over the limit, liblzma raises LZMAError, which the reader reports as InputError."""

    MEMLIMIT = 256 << 20

    def __init__(self, raw):
        self._raw = raw
        self._dec = lzma.LZMADecompressor(lzma.FORMAT_AUTO, memlimit=self.MEMLIMIT)
        self._eof = False

    def readable(self):
        return True

    def readinto(self, buf):
        n = len(buf)
        while not self._eof:
            if self._dec.eof:
                rest = self._dec.unused_data
                if not rest:
                    rest = self._raw.read(CHUNK)
                    if not rest:
                        self._eof = True
                        break
                self._dec = lzma.LZMADecompressor(lzma.FORMAT_AUTO, memlimit=self.MEMLIMIT)
                data = self._dec.decompress(rest, n)
            elif self._dec.needs_input:
                chunk = self._raw.read(CHUNK)
                if not chunk:
                    raise EOFError("compressed file ended before the end-of-stream marker")
                data = self._dec.decompress(chunk, n)
            else:
                data = self._dec.decompress(b"", n)
            if data:
                buf[:len(data)] = data
                return len(data)
        return 0


class Stream:
    """A source opened for reading: ``stream`` is a buffered, decompressed binary stream (read,
    readline), ``raw_count`` the bytes of the raw input read so far. close() closes every layer."""

    def __init__(self, source: Source, offset: int = 0):
        self.source = source
        self._layers = []
        self._file = None
        try:
            self._open(offset)
        except BaseException:
            self.close()
            raise

    def _open(self, offset: int):
        source = self.source
        if source.is_stdin:
            self._raw = _Counting(sys.stdin.buffer)
            buffered = io.BufferedReader(self._raw, CHUNK)
            head = buffered.peek(8)[:8]
            compression = next((c for magic, c in _MAGIC if head.startswith(magic)), None)
        else:
            try:
                self._file = open(source.path, "rb", buffering=0)
            except OSError as exc:
                raise InputError(f"{source.path}: cannot open: {exc.strerror or exc}") from None
            compression = source.compression
            if compression is None and offset:
                self._file.seek(offset)          # plain files seek straight to the resume offset
            self._raw = _Counting(self._file, offset if compression is None else 0)
            buffered = io.BufferedReader(self._raw, CHUNK)
        self._layers.append(buffered)
        if compression is None:
            self.stream = buffered
            if source.is_stdin:
                self._discard(offset)
            return
        if compression == "gz":
            inner = gzip.GzipFile(fileobj=buffered, mode="rb")
        elif compression == "bz2":
            inner = bz2.BZ2File(buffered, "rb")
        elif compression == "xz":
            inner = _LZMAReader(buffered)
        elif compression == "zst":
            inner = _zstd().ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
        else:  # pragma: no cover - guarded by source_for
            raise InputError(f"{source.name}: unknown compression {compression!r}")
        self._layers.append(inner)
        self.stream = io.BufferedReader(inner, CHUNK)
        self._layers.append(self.stream)
        self._discard(offset)

    def _discard(self, n: int):
        left = n
        while left:
            got = self.stream.read(min(left, CHUNK))
            if not got:
                raise InputError(f"{self.source.name}: ends before the resume offset {n} "
                                 f"(the input changed?)")
            left -= len(got)

    @property
    def raw_count(self) -> int:
        return self._raw.count

    def close(self):
        for layer in reversed(self._layers):
            try:
                layer.close()
            except Exception:  # noqa: BLE001 - closing a broken stream must not mask the cause
                pass
        self._layers = []
        if self._file is not None:
            self._file.close()
            self._file = None


# --- splitting a byte stream into episodes ---------------------------------------------------------

def _is_blank(fragment: bytes) -> bool:
    return not fragment.strip(_BLANK)


def _EVERY_EPISODE() -> int:
    return 0                        # a batch limit every episode reaches: one episode per batch


class _Splitter:
    """Splits one readable byte stream into episodes, tracking the offset after each episode.

    Works on fragments returned by readline(max_episode) so memory stays bounded by max_episode
    plus one read buffer, however long a line is."""

    def __init__(self, stream, split: str, max_episode: int, offset: int = 0, line_start: bool = True):
        self.stream = stream
        self.split = split
        self.max_episode = max_episode
        self.offset = offset            # offset just after the last yielded episode
        self.line_start = line_start    # whether self.offset begins a line
        self.read_pos = offset          # offset of the next byte to be read

    def __iter__(self):
        if self.split == "lines":
            return self._lines()
        if self.split == "paragraphs":
            return self._paragraphs()
        return self._documents()

    def _mark(self, offset: int, line_start: bool):
        self.offset = offset
        self.line_start = line_start

    def batches(self, stop):
        """The episodes as lists, for a loop that hands many to the core at once: with the lines
        split, the complete lines of a read chunk at a time, a list ending early at the first
        episode that ends at or past stop() (an offset of this stream, read before each list);
        other splits: one episode per list. offset and line_start are marked after each list."""
        if self.split == "lines":
            return self._line_batches(stop)
        return ([episode] for episode in self)

    def _lines(self):
        for batch in self._line_batches(_EVERY_EPISODE):
            yield batch[0]

    def _line_batches(self, stop):
        # Bulk path: split whole chunks; a line running over chunk ends is kept in `parts`.
        # A line longer than the cap is cut at multiples of the cap from where reading started.
        # An empty line is an episode (a blank line is part of the text, and held-out scoring
        # counts it); the newline ending a line that was cut exactly at the cap is not:
        # `open_cut` says the line read so far was cut there (or reading resumed inside a line).
        read, cap = self.stream.read, self.max_episode
        parts: list[bytes] = []     # the unfinished line read so far (less than cap bytes)
        plen = 0
        pos = self.read_pos         # offset of the first byte of parts (of the next line if none)
        open_cut = not self.line_start
        while True:
            chunk = read(CHUNK)
            if not chunk:
                break
            self.read_pos += len(chunk)
            if parts:
                nl = chunk.find(b"\n")
                if nl < 0:
                    parts.append(chunk)
                    plen += len(chunk)
                    if plen >= cap:
                        data = b"".join(parts)
                        cut = len(data) - len(data) % cap
                        for i in range(0, cut, cap):
                            self._mark(pos + i + cap, False)
                            yield [data[i:i + cap]]
                        pos += cut
                        parts = [data[cut:]] if cut < len(data) else []
                        plen = len(data) - cut
                        open_cut = not parts
                    continue
                line = b"".join(parts) + chunk[:nl]
                parts, plen = [], 0
                for piece in self._long_line(line, pos):
                    yield [piece]
                pos += len(line) + 1
                open_cut = False
                chunk = chunk[nl + 1:]
            lines = chunk.split(b"\n")
            tail = lines.pop()
            i, n = 0, len(lines)
            if n and open_cut:
                if not lines[0]:
                    pos += 1
                    i = 1
                open_cut = False
            # Runs of lines under the cap are episodes as they are; a longer line is cut.
            longs = [] if not n or max(map(len, lines)) < cap else \
                [k for k in range(i, n) if len(lines[k]) >= cap]
            longs.append(n)
            for j in longs:
                while i < j:              # lines[i:j]: a run of whole lines
                    limit = stop()
                    end = pos + len(lines[i]) + 1
                    if end < limit:
                        run = lines if i == 0 and j == n else lines[i:j]
                        end = pos + sum(map(len, run)) + len(run)
                        if end < limit:
                            self._mark(end, True)
                            yield run
                            pos, i = end, j
                            continue
                        end = pos + len(lines[i]) + 1
                    k = i                 # the run's first episode ending at or past the limit
                    while end < limit:
                        k += 1
                        end += len(lines[k]) + 1
                    pos = end
                    self._mark(pos, True)
                    yield lines[i:k + 1]
                    i = k + 1
                if j < n:
                    for piece in self._long_line(lines[j], pos):
                        yield [piece]
                    pos += len(lines[j]) + 1
                    i = j + 1
            if tail:
                if len(tail) >= cap:
                    cut = len(tail) - len(tail) % cap
                    for i in range(0, cut, cap):
                        self._mark(pos + i + cap, False)
                        yield [tail[i:i + cap]]
                    pos += cut
                    tail = tail[cut:]
                    open_cut = not tail
                if tail:
                    parts, plen = [tail], len(tail)
        if parts:
            data = b"".join(parts)
            self._mark(pos + len(data), False)
            yield [data]
            pos += len(data)
        self._mark(pos, self.line_start if pos == self.offset else True)

    def _long_line(self, line: bytes, pos: int):
        """A complete line (its \n follows) starting at offset pos, cut into pieces of the cap."""
        cap = self.max_episode
        n = len(line)
        for i in range(0, n, cap):
            piece = line[i:i + cap]
            if len(piece) < cap:
                self._mark(pos + n + 1, True)
            else:
                self._mark(pos + i + cap, False)
            yield piece
        # after a full last piece its \n is consumed silently with what follows, as readline does

    def _paragraphs(self):
        readline, cap = self.stream.readline, self.max_episode
        parts: list[bytes] = []
        size = 0
        at_line_start = self.line_start
        start = self.read_pos           # offset where the pending paragraph (parts) begins
        while True:
            frag = readline(cap)
            eof = not frag
            if not eof:
                self.read_pos += len(frag)
            # a blank line: at a line start, whole (ends in \n, or is the short last line), only
            # whitespace; a fragment continuing a longer line is never blank
            blank = eof or (at_line_start and (frag[-1:] == b"\n" or len(frag) < cap)
                            and _is_blank(frag))
            if blank:
                if parts:
                    text = b"".join(parts)
                    parts, end = [], start + size
                    size = 0
                    ep = text[:-1] if text[-1:] == b"\n" else text
                    if ep:
                        self._mark(end, text[-1:] == b"\n")
                        yield ep
                if eof:
                    self._mark(self.read_pos, at_line_start)
                    return
                start = self.read_pos
                at_line_start = True
                continue
            at_line_start = frag[-1:] == b"\n"
            parts.append(frag)
            size += len(frag)
            if size >= cap:
                text = b"".join(parts)
                pos = 0
                while len(text) - pos >= cap:
                    piece = text[pos:pos + cap]
                    pos += cap
                    self._mark(start + pos, piece[-1:] == b"\n")
                    yield piece
                rest = text[pos:]
                start += pos
                parts, size = ([rest] if rest else []), len(rest)

    def _documents(self):
        read, cap = self.stream.read, self.max_episode
        while True:
            # read(cap) on a BufferedReader returns cap bytes unless at EOF
            piece = read(cap)
            if not piece:
                self._mark(self.read_pos, True)
                return
            self.read_pos += len(piece)
            self._mark(self.read_pos, piece[-1:] == b"\n")
            yield piece


# --- readers ---------------------------------------------------------------------------------------

def _wiki_modules():
    try:
        import mwparserfromhell
        import mwxml
    except ImportError as exc:
        raise InputError(f"reading Wikipedia XML dumps needs the optional packages 'mwxml' and "
                         f"'mwparserfromhell' (pip install 'melvin[train]'): {exc}") from None
    return mwxml, mwparserfromhell


_WIKI_DROP_TAGS = {"ref", "references", "gallery", "math", "timeline", "score", "syntaxhighlight",
                   "table"}
_SPACES = re.compile(r"[ \t\u00a0]{2,}")
_WIKI_DROP_LINKS = ("file:", "image:", "category:", "media:")


def wiki_plain_text(wikitext: str, mwparserfromhell=None) -> bytes:
    """Article wikitext -> plain text (markup, templates, refs and tables stripped) as UTF-8."""
    if mwparserfromhell is None:
        _, mwparserfromhell = _wiki_modules()
    code = mwparserfromhell.parse(wikitext)
    # references, tables, math and media/category links carry no prose: drop them whole
    for node in list(code.filter_tags(recursive=False,
                                      matches=lambda n: str(n.tag).lower() in _WIKI_DROP_TAGS)):
        try:
            code.remove(node)
        except ValueError:
            pass
    for link in list(code.filter_wikilinks()):
        if str(link.title).strip().lower().startswith(_WIKI_DROP_LINKS):
            try:
                code.remove(link)
            except ValueError:
                pass
    text = code.strip_code(normalize=True, collapse=True)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    out, blank = [], False
    for line in lines:
        if line:
            if blank and out:
                out.append("")
            out.append(line)
            blank = False
        else:
            blank = True
    return ("\n".join(out) + "\n").encode("utf-8") if out else b""


class Reader:
    """Episodes of one source, in order; see the module docstring for splits and positions.

    Iterating raises InputError (naming the source) on unreadable or corrupt data."""

    def __init__(self, source: Source, split: str = "lines", *, max_episode: int = DEFAULT_MAX_EPISODE,
                 start: dict | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if isinstance(max_episode, bool) or not isinstance(max_episode, int) or max_episode < 1:
            raise ValueError(f"max_episode must be a positive int, got {max_episode!r}")
        self.source = source
        self.split = split
        self.max_episode = max_episode
        start = dict(start or {})
        self._item = int(start.get("item", 0))
        self._offset = int(start.get("offset", 0))
        self._line_start = bool(start.get("line_start", True))
        self._consumed = int(start.get("consumed", self._offset))
        self._item_base = self._consumed - self._offset   # bytes consumed before the current item
        self._splitter: _Splitter | None = None
        self._opened: Stream | None = None
        self._done = False

    # where to resume after the last yielded episode
    @property
    def position(self) -> dict:
        sp = self._splitter
        offset = sp.offset if sp is not None else self._offset
        line_start = sp.line_start if sp is not None else self._line_start
        return {"item": self._item, "offset": offset, "line_start": line_start,
                "consumed": self._item_base + offset}

    @property
    def consumed(self) -> int:
        sp = self._splitter
        return self._item_base + (sp.offset if sp is not None else self._offset)

    @property
    def raw_position(self) -> int:
        if self._done and self.source.size is not None:
            return self.source.size
        if self._opened is None:
            return 0
        return self._opened.raw_count

    def close(self):
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        return self._episodes(None)

    def batches(self, stop):
        """The episodes as lists (several lines at a time with the lines split; see
        _Splitter.batches), for a loop that hands many to the core at once. A list ends early at
        the first episode that brings `consumed` to stop() or past it, so a checkpoint or limit
        falls where it would one episode at a time; position and consumed are exact after each
        list."""
        return self._episodes(stop)

    def _episodes(self, stop):
        errors = _decode_errors()
        try:
            if self.source.wiki:
                yield from self._wiki(stop)
            else:
                yield from self._text(stop)
        except InputError:
            raise
        except errors as exc:
            raise InputError(f"{self.source.name}: cannot read ({type(exc).__name__}: {exc}); "
                             f"corrupt or truncated input?") from None
        finally:
            self.close()
        self._done = True

    def _split(self, stop):
        """The current splitter's episodes, or lists of them (stop: see batches)."""
        if stop is None:
            return iter(self._splitter)
        return self._splitter.batches(lambda: stop() - self._item_base)

    def _text(self, stop):
        self._opened = Stream(self.source, self._offset)
        self._splitter = _Splitter(self._opened.stream, self.split, self.max_episode, self._offset,
                                   self._line_start)
        yield from self._split(stop)

    def _wiki(self, stop):
        mwxml, mwp = _wiki_modules()
        from mwxml.element_iterator import ElementIterator

        self._opened = Stream(self.source)
        try:
            top = ElementIterator.from_file(self._opened.stream)
            dump = mwxml.Dump.from_element(top)
        except Exception as exc:  # noqa: BLE001 - mwxml raises assorted types on bad XML
            raise InputError(f"{self.source.name}: not a readable MediaWiki XML dump "
                             f"({type(exc).__name__}: {exc})") from None
        # mwxml clears each finished page but leaves it attached to the root element (~100 bytes
        # a page, gigabytes over a full dump): detach finished pages as we go.
        root = top.element
        index = 0
        pages = iter(dump)
        while True:
            del root[:]
            try:
                page = next(pages)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"{self.source.name}: malformed XML dump after article {index} "
                                 f"({type(exc).__name__}: {exc})") from None
            try:
                text = None
                for revision in page:       # a page's revisions must be consumed either way
                    text = revision.text
            except Exception as exc:  # noqa: BLE001 - mwxml/ElementTree raise assorted types
                raise InputError(f"{self.source.name}: malformed XML in page {page.title!r} "
                                 f"({type(exc).__name__}: {exc})") from None
            if page.namespace != 0 or page.redirect:
                continue
            if index < self._item:
                index += 1
                continue
            body = wiki_plain_text(text or "", mwp)
            if index > self._item:
                self._item_base += self._splitter.offset if self._splitter is not None else self._offset
                self._item, self._offset, self._line_start = index, 0, True
            sub = io.BufferedReader(io.BytesIO(body), CHUNK)
            sub.seek(self._offset)
            self._splitter = _Splitter(sub, self.split, self.max_episode, self._offset, self._line_start)
            yield from self._split(stop)
            index += 1
        # after the last article: the next position is past everything
        if self._splitter is not None:
            self._item_base += self._splitter.offset
            self._splitter = None
        self._item, self._offset, self._line_start = index, 0, True
