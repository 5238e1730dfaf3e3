"""L0 and guest: the agent's records framed so that a console shared with the kernel cannot corrupt them.

The guest agent (guestkit/agent.py) writes everything the host must get back (the command's
stdout and stderr lines, result files, its exit code) as records on /dev/console, and the
kernel prints its own messages on the same console at any byte position: a UART driver
sends the tty's buffer from its interrupt while printk writes synchronously, so a kernel
line can land in the middle of one of ours (the issue-16 `@@DMT-EXIT 0[ ... reboot: Power
down` line).  LAVA (issue 18) has only the console, so the records are framed rather than
moved to a channel of their own.

One record is one or more lines, each framing one chunk of at most CHUNK bytes:

    @@DMT1 <len> <crc32> <stream>.<rid> <kind> <seq>/<total> <size> <digest> <name> <chunk>@@

len: the whole line's length (4 hex digits); crc32: of the text from len to the chunk (the
crc field left out); stream: the sender's random id (8 hex), rid: the record's number in
that stream (hex, from 0: a gap is a lost record); seq/total:
this chunk's place; size: the record's bytes; digest: sha256 of the record's data (16 hex);
name and chunk: base64 ("-" when empty).  Nothing in a line but the two markers can be "@",
so console text cannot pass for a frame.  The decoder accepts a line only whole (length and
crc32 agree, every field well formed, the chunk the size its place says), puts a record
together from its chunks and checks the digest.  A kernel line spliced into a frame at one
place is cut back out (the frame's head is on one console line, its tail on a later one; the
length says where they join, the crc32 says the join is right); anything else damaged is
rejected with its reason, and a record that stays incomplete is an error of the run.

The sender watches the kernel log (/dev/kmsg) while it writes: if the kernel logged a
message the console prints (level below console_loglevel) during a batch of lines, or just
before it, the batch is sent again; the decoder keeps the first intact copy of each chunk.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import os
import re
import termios
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

MARKER, END = "@@DMT1 ", "@@"
CHUNK = 1536             # data bytes per line: 2048 base64 characters, a line of about 2.1 KB
_HEAD = len(MARKER) + 5  # marker + "LLLL ": from here on the length field is known
_MAX_LINE = 0xFFFF
_FRAME = re.compile(r"@@DMT1 ([0-9a-f]{4}) ([0-9a-f]{8}) ([0-9a-f]{8})\.([0-9a-f]{1,8}) ([a-z]{1,8}) "
                    r"(\d{1,6})/(\d{1,6}) (\d{1,12}) ([0-9a-f]{16}) ([A-Za-z0-9_=-]+) ([A-Za-z0-9+/=-]+)@@")
# A line made only of frame characters and ending like a frame: the tail of a damaged one.
_TAIL = re.compile(r"@?[A-Za-z0-9+/=_. -]*@@?")
_CUT_IN_MARKER = "was cut inside its marker"
# The stream, record and chunk of a damaged line, when still legible (only to tell whether
# an intact copy made up for it: never trusted for data).
_KEY = re.compile(r"([0-9a-f]{8})\.([0-9a-f]{1,8}) [a-z]{1,8} (\d{1,6})/\d{1,6} ")


@dataclass(frozen=True)
class Record:
    """One record as the sender gave it: kind (out, err, file, exit, ready, ...), name, data."""

    kind: str
    name: str
    data: bytes


@dataclass(frozen=True)
class Frame:
    """One intact line: a chunk of record `rid` of sender `stream`."""

    stream: str
    rid: int
    kind: str
    seq: int
    total: int
    size: int
    digest: str
    name: str
    chunk: bytes
    length: int


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _b64(data: bytes, alphabet=base64.b64encode) -> str:
    return alphabet(data).decode() if data else "-"


def frame_lines(kind: str, name: str, data: bytes, rid: int, stream: str) -> list[str]:
    """The lines (without line ends) of one record."""
    if not re.fullmatch(r"[a-z]{1,8}", kind):
        raise ValueError(f"record kind {kind!r}: 1 to 8 lower-case letters")
    total = max(1, -(-len(data) // CHUNK))
    name64, digest = _b64(name.encode(errors="replace"), base64.urlsafe_b64encode), _digest(data)
    lines = []
    for seq in range(total):
        rest = (f"{stream}.{rid:x} {kind} {seq}/{total} {len(data)} {digest} {name64} "
                f"{_b64(data[seq * CHUNK:(seq + 1) * CHUNK])}")
        length = len(MARKER) + 4 + 1 + 8 + 1 + len(rest) + len(END)
        if length > _MAX_LINE:
            raise ValueError(f"record name too long ({len(name)} characters)")
        crc = binascii.crc32(f"{length:04x} {rest}".encode())
        lines.append(f"{MARKER}{length:04x} {crc:08x} {rest}{END}")
    return lines


def encode(kind: str, name: str, data: bytes, *, rid: int = 0, stream: str | None = None) -> str:
    """One record as text lines ready to print, each ending in a newline.  On its own, a
    record is a stream of its own (a decoder cannot tell it was lost); a sender that numbers
    its records (rid 0, 1, ... under one `stream` id, as Sender does) has gaps reported."""
    return "".join(line + "\n" for line in frame_lines(kind, name, data, rid, stream or os.urandom(4).hex()))


def parse_frame(text: str) -> Frame | str:
    """`text` as one whole frame, or the reason it is not one."""
    m = _FRAME.fullmatch(text)
    if m is None:
        return "not a well-formed frame"
    length, crc, stream, rid, kind, seq, total, size, digest, name64, chunk64 = m.groups()
    if int(length, 16) != len(text):
        return f"length {len(text)}, the frame says {int(length, 16)}"
    if binascii.crc32((text[len(MARKER):_HEAD] + text[_HEAD + 9:-len(END)]).encode()) != int(crc, 16):
        return "failed its checksum"
    try:
        name = "" if name64 == "-" else base64.urlsafe_b64decode(name64).decode()
        chunk = b"" if chunk64 == "-" else base64.b64decode(chunk64, validate=True)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return "bad base64"
    seq_i, total_i, size_i = int(seq), int(total), int(size)
    if total_i != max(1, -(-size_i // CHUNK)) or seq_i >= total_i:
        return f"chunk {seq}/{total} does not fit a record of {size} bytes"
    if len(chunk) != min(CHUNK, size_i - seq_i * CHUNK):
        return f"chunk {seq}/{total} holds {len(chunk)} bytes"
    return Frame(stream, int(rid, 16), kind, seq_i, total_i, size_i, digest, name, chunk, len(text))


@dataclass
class _Open:
    """A console line holding the head of a frame that is not whole (yet): a kernel line
    spliced into it leaves the frame's tail on a later line."""

    text: str    # from the marker on
    before: str  # console text before the marker on that line
    why: str     # what is wrong with it as it stands
    age: int = 0


class Decoder:
    """Extracts the intact records from console text and leaves the rest as console lines.

    feed() any pieces of the stream (whole lines or not).  `rejected` lists every damaged
    frame with its reason (a resend may make up for it); `errors` the records that did not
    come back whole, filled by finish() at the end of the stream.
    """

    LOOKBACK = 8  # console lines a frame's head waits for its tail (kernel lines in between)

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.rejected: list[str] = []
        self._buf = ""
        self._held: deque[_Open | str] = deque()  # in console order, from the oldest open head on
        self._parts: dict[tuple[str, int], dict[int, Frame]] = {}
        self._done: set[tuple[str, int]] = set()   # (stream, rid) of records whole (or found bad once whole)
        self._rejects: list[tuple[str, tuple[str, int, int] | None, int, int]] = []  # why, key if legible, counts
        self._numbered = 0  # intact frames of records after a stream's first: their numbers reveal a lost record
        self._intact = 0    # intact frames so far, and when each (stream, rid, seq) last came
        self._came: dict[tuple[str, int, int], int] = {}

    def feed(self, text: str) -> list[Record]:
        """The records completed by `text`."""
        return [item for item in self.feed_items(text) if isinstance(item, Record)]

    def feed_items(self, text: str) -> list[Record | str]:
        """Records and console lines (without line ends) completed by `text`, in stream order."""
        *lines, self._buf = re.split(r"\r\n|\r|\n", self._buf + text)
        if len(self._buf) > 4 * _MAX_LINE:  # no line end for this long: not ours, show it
            lines.append(self._buf)
            self._buf = ""
        out: list[Record | str] = []
        for line in lines:
            if line:
                out += self._line(line)
        return out

    def finish(self) -> list[Record | str]:
        """End of the stream: what is left, and `errors` for every record not whole."""
        out = self.feed_items("\n") if self._buf else []
        out += self._settle()
        missing = self._missing()
        self.errors += [self._describe_missing(key) for key in missing]
        self.errors += self._unmade(set(missing))
        return out

    def _reject(self, why: str, text: str) -> None:
        self.rejected.append(why)
        m = _KEY.search(text)
        key = (m.group(1), int(m.group(2), 16), int(m.group(3))) if m else None
        self._rejects.append((why, key, self._numbered, self._intact))

    def _unmade(self, missing: set[tuple[str, int]]) -> list[str]:
        """Damaged lines no intact copy made up for and no gap in a stream's numbers reports."""
        errors = []
        for why, key, numbered, intact in self._rejects:
            if key is None:
                if self._numbered == numbered:  # no numbered record came after it to reveal a gap
                    errors.append(f"{why}; its record did not come back")
            elif self._came.get(key, -1) <= intact and key[:2] not in missing:  # no intact copy came after it
                errors.append(f"record {key[1]} (chunk {key[2]}): {why}")
        return errors

    def _missing(self) -> list[tuple[str, int]]:
        last: dict[str, int] = {}
        for stream, rid in self._done | set(self._parts):
            last[stream] = max(rid, last.get(stream, 0))
        return [(stream, rid) for stream, top in sorted(last.items()) for rid in range(top + 1)
                if (stream, rid) not in self._done]

    def _describe_missing(self, key: tuple[str, int]) -> str:
        parts, rid = self._parts.get(key), key[1]
        if not parts:
            return f"record {rid} never arrived intact"
        first = next(iter(parts.values()))
        lost = [str(s) for s in range(first.total) if s not in parts]
        return (f"record {rid} ({first.kind} {first.name!r}, {first.size} bytes): chunk(s) {', '.join(lost)} "
                f"of {first.total} failed their checksum or never arrived")

    # -- one console line -------------------------------------------------------------
    def _line(self, line: str) -> list[Record | str]:
        out: list[Record | str] = []
        pos = 0
        while (j := line.find(MARKER, pos)) >= 0:
            frame = self._frame_at(line, j)
            if isinstance(frame, str):
                self._held.append(_Open(line[j:], line[pos:j], frame))
                return out + self._age()
            out += self._settle() + (self._text(line[pos:j]) if j > pos else []) + self._frame(frame)
            pos = j + frame.length
        rest = line[pos:]
        if not rest:
            return out
        if pos == 0 and _TAIL.fullmatch(rest):
            return out + self._tail(rest)
        if pos == 0 and rest.startswith("@"):  # maybe a frame cut inside its marker: hold it too
            self._held.append(_Open(rest, "", _CUT_IN_MARKER))
            return out + self._age()
        if _KEY.search(rest) and rest.endswith("@"):  # a record line whose marker was damaged
            self._reject("a record line without its marker", rest)
            return out
        return out + self._text(rest)

    @staticmethod
    def _frame_at(line: str, j: int) -> Frame | str:
        """The frame starting at line[j], or why there is none."""
        field = line[j + len(MARKER):_HEAD - 1 + j]
        if not re.fullmatch(r"[0-9a-f]{4}", field):
            return "was cut inside its length field"
        if j + int(field, 16) > len(line):
            return f"was cut short ({len(line) - j} of {int(field, 16)} characters)"
        return parse_frame(line[j:j + int(field, 16)])

    def _text(self, text: str) -> list[Record | str]:
        if self._held:
            self._held.append(text)  # keep console order behind a head that may still be mended
            return self._age()
        return [text]

    def _age(self) -> list[Record | str]:
        out: list[Record | str] = []
        for item in self._held:
            if isinstance(item, _Open):
                item.age += 1
        while self._held and isinstance(self._held[0], _Open) and self._held[0].age > self.LOOKBACK:
            out += self._expire()
        return out

    def _expire(self) -> list[Record | str]:
        """The oldest held item leaves: an open head that no tail mended is a damaged frame
        (its line is shown, since the kernel's text is in it); console text goes out."""
        item = self._held.popleft()
        out: list[Record | str] = []
        if isinstance(item, _Open):
            if item.why != _CUT_IN_MARKER or _KEY.search(item.text):  # else a console line starting with "@"
                self._reject(f"a record line {item.why}", item.text)
            out.append(item.before + item.text)
        else:
            out.append(item)
        while self._held and isinstance(self._held[0], str):
            out.append(self._held.popleft())
        return out

    def _settle(self) -> list[Record | str]:
        """A whole frame came: the heads held before it will get no tail (the agent writes
        one line after the other), so they are damaged frames."""
        out: list[Record | str] = []
        while self._held:
            out += self._expire()
        return out

    def _tail(self, tail: str) -> list[Record | str]:
        """A line that ends like a frame but has no head: join it to a held head (a kernel
        line was spliced in between), or to the marker if the cut fell inside the marker."""
        for index in range(len(self._held) - 1, -1, -1):
            head = self._held[index]
            if isinstance(head, _Open):
                for cut in self._cuts(head.text, tail):
                    frame = parse_frame(head.text[:cut] + tail)
                    if not isinstance(frame, str):
                        self._held[index] = head.before + head.text[cut:]  # what the kernel printed
                        return self._settle() + self._frame(frame)
        for k in range(1, len(MARKER)):  # the head's line has gone by: the marker is known anyway
            if tail.startswith(MARKER[k:]):
                frame = parse_frame(MARKER[:k] + tail)
                if not isinstance(frame, str):
                    return self._settle() + self._frame(frame)
        self._reject("the tail of a record line whose head was lost", tail)
        return []

    @staticmethod
    def _cuts(head: str, tail: str) -> list[int]:
        """Where the kernel's text may have begun in `head`: fixed by the length field once
        it is whole, else inside the field (a handful of places)."""
        cuts = [k for k in range(1, len(MARKER)) if head.startswith(MARKER[:k])]
        cuts += range(len(MARKER), min(len(head), _HEAD - 1) + 1)
        field = head[len(MARKER):_HEAD - 1]
        if re.fullmatch(r"[0-9a-f]{4}", field):
            cut = int(field, 16) - len(tail)
            if _HEAD - 1 <= cut <= len(head):
                cuts.append(cut)
        return cuts

    # -- putting records together -----------------------------------------------------
    def _frame(self, frame: Frame) -> list[Record | str]:
        key = (frame.stream, frame.rid)
        self._came[(frame.stream, frame.rid, frame.seq)] = self._intact = self._intact + 1
        if key in self._done:
            return []  # a resent copy of a record that is already whole
        parts = self._parts.setdefault(key, {})
        first = next(iter(parts.values()), frame)
        if (first.kind, first.name, first.total, first.size, first.digest) != \
                (frame.kind, frame.name, frame.total, frame.size, frame.digest):
            self._reject(f"record {frame.rid}: a chunk of another record under its number", "")
            return []
        parts.setdefault(frame.seq, frame)
        self._numbered += frame.rid > 0
        if len(parts) < frame.total:
            return []
        del self._parts[key]
        self._done.add(key)
        data = b"".join(parts[s].chunk for s in range(frame.total))
        if _digest(data) != frame.digest:
            self.errors.append(f"record {frame.rid} ({frame.kind} {frame.name!r}) failed its checksum once "
                               "put together")
            return []
        return [Record(frame.kind, frame.name, data)]


class KmsgWatch:
    """Tells whether the kernel logged a message the console prints since the last poll."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, path: str = "/dev/kmsg") -> KmsgWatch | None:
        """From the log's end on; None where the log cannot be read (then no resends)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(fd, 0, os.SEEK_END)
        except OSError:
            return None
        return cls(fd)

    def poll(self) -> bool:
        """True if a message at a level the console prints arrived (or records were lost)."""
        levels: list[int] = []
        lost = False
        while True:
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # the log overwrote records we had not read: assume the worst
                lost = True
                continue
            except OSError:
                break
            if not record:
                break
            prio = record.split(b",", 1)[0]
            levels.append(int(prio) & 7 if prio.isdigit() else 0)
        return lost or (bool(levels) and min(levels) < console_loglevel())


def console_loglevel(path: str = "/proc/sys/kernel/printk") -> int:
    """Messages below this level reach the console (8 if unknown: assume all do)."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 8


class Sender:
    """Writes records in batches of lines and resends a batch the kernel may have printed into.

    A batch is written, flushed and drained (tcdrain: until the UART has sent it); it is
    sent again if the kernel logged a console message during it, just before it, or during
    the batch before (printing can lag logging), once the kernel has been quiet for a few
    milliseconds.  Batches shrink while the kernel is busy.
    """

    BATCH = 16
    RETRIES = 20
    QUIET_MAX = 0.2

    def __init__(self, out: TextIO, watch: KmsgWatch | None = None,
                 drain: Callable[[], None] | None = None) -> None:
        self.out, self.watch = out, watch
        self.drain = drain or (lambda: tty_drain(out))
        self.resent = 0   # batches sent again
        self.gave_up = 0  # batches still disturbed after RETRIES resends
        self._rids = itertools.count()
        self._stream = os.urandom(4).hex()
        self._carry = False
        self._batch = self.BATCH

    def send(self, kind: str, name: str, data: bytes) -> None:
        """Write one record whole (the caller keeps records from interleaving)."""
        lines = frame_lines(kind, name, data, next(self._rids), self._stream)
        i = 0
        while i < len(lines):
            part = lines[i:i + self._batch]
            for attempt in range(self.RETRIES + 1):
                if not self._window(part):
                    self._batch = min(self.BATCH, self._batch * 2)
                    break
                self._batch = max(1, self._batch // 2)  # smaller batches while the kernel is busy
                if attempt == self.RETRIES:
                    self.gave_up += 1  # the decoder mends or reports what is left damaged
                else:
                    self.resent += 1
                    self._quiet()
                    part = lines[i:i + self._batch]  # the rest of the batch goes in the batches after
            i += len(part)

    def _quiet(self) -> None:
        """Wait until the kernel has printed what it logged (a few ms without a new console
        message, at most QUIET_MAX s): a resend right after a message has the longest
        stretch of quiet before the next."""
        deadline = time.monotonic() + self.QUIET_MAX
        while time.monotonic() < deadline:
            time.sleep(0.003)
            if self.watch is None or not self.watch.poll():
                self._carry = False
                return

    def _window(self, part: list[str]) -> bool:
        """Write `part`; True if the kernel may have printed into it."""
        before = self.watch.poll() if self.watch else False
        self.out.write("".join(line + "\n" for line in part))
        self.out.flush()
        self.drain()
        after = self.watch.poll() if self.watch else False
        disturbed = before or after or self._carry
        self._carry = after
        return disturbed


def tty_drain(out: TextIO) -> None:
    """Wait until a tty has sent what was written to it; nothing to wait for on a pipe or file."""
    try:
        termios.tcdrain(out.fileno())
    except (termios.error, OSError, ValueError, AttributeError):
        pass


def save(root: Path, name: str, data: bytes, tag: str) -> Path:
    """Write a file record's data as root/name, atomically (a .<name>.<tag> file renamed
    into place), and return the path; ValueError when `name` points outside root (a
    record that is not one of ours must not write anywhere else)."""
    dest = (root / name).resolve()
    if root.resolve() not in dest.parents or name.startswith("/"):
        raise ValueError(f"file record {name!r} points outside {root}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{tag}")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest
