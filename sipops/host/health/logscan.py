"""New ERROR/CRITICAL lines of the OpenSIPS log since the last run, with a cursor kept between runs.

The cursor is (device, inode, offset) of the live file, plus the same for the file it was before
the last rotation. When the live file's inode changes, the old one is found again by its inode
among the rotated names (`opensips.log.1`, the dateext `opensips.log-20260101-1767225600`, ...)
and finished first, then the new file is read from its start. The previous file stays in the
cursor, so lines the logger writes into it after the rotation (before it reopens) are read on the
next run. Only complete lines are consumed: a line being written is read once it is finished.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# OpenSIPS level prefixes: "ERROR:core:...", "CRITICAL:...", "ALERT:..." (after syslog's header).
ERROR_LINE = re.compile(rb"(?:^|[\s\]:])(ERROR|CRITICAL|CRIT|ALERT|EMERG|BUG):")
COMPRESSED = (".gz", ".xz", ".bz2", ".zst", ".lz4")
SAMPLE_CHARS = 160
HEAD_BYTES = 256  # a file's first bytes identify it when a deleted log's inode number is reused


@dataclass(frozen=True)
class FilePos:
    dev: int
    inode: int
    offset: int
    head: str = ""  # sha256 of the file's first head_len bytes
    head_len: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dev": self.dev, "inode": self.inode, "offset": self.offset, "head": self.head, "head_len": self.head_len,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any) -> FilePos | None:
        try:
            return cls(
                int(data["dev"]), int(data["inode"]), int(data["offset"]), str(data.get("head", "")),
                int(data.get("head_len", 0)),
            )  # fmt: skip
        except (TypeError, KeyError, ValueError, AttributeError):
            return None


def _head(path: Path, length: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(length)).hexdigest()


def _identify(path: Path, st: os.stat_result, offset: int) -> FilePos:
    """A position in `path` that remembers the file's first bytes (up to HEAD_BYTES)."""
    length = min(st.st_size, HEAD_BYTES)
    return FilePos(st.st_dev, st.st_ino, offset, _head(path, length), length)


def _is(path: Path, st: os.stat_result | None, pos: FilePos) -> bool:
    """`path` is the file `pos` was taken in: same device and inode, and the same first bytes."""
    if st is None or (st.st_dev, st.st_ino) != (pos.dev, pos.inode):
        return False
    if st.st_size < pos.head_len:
        return False  # shorter than what we saw of it: truncated (handled by the caller) or another file
    return not pos.head_len or _head(path, pos.head_len) == pos.head


@dataclass
class ScanResult:
    errors: int = 0  # ERROR lines
    crits: int = 0  # CRITICAL/ALERT/EMERG/BUG lines
    lines: int = 0  # complete lines read this run
    sample: str = ""  # the first matching line
    notes: list[str] = field(default_factory=list)
    started: bool = False  # first run: the cursor was placed at the end, nothing read
    state: dict[str, Any] = field(default_factory=dict)  # the cursor to keep for the next run


def _read(path: Path, offset: int, out: ScanResult, on_line: Callable[[bytes], None] | None) -> int:
    """Read complete lines from `offset`; returns the offset after the last complete line."""
    with open(path, "rb") as f:
        f.seek(offset)
        pos = offset
        for line in f:
            if not line.endswith(b"\n"):
                break  # still being written
            pos += len(line)
            out.lines += 1
            if on_line is not None:
                on_line(line)
            match = ERROR_LINE.search(line)
            if match:
                if match.group(1) == b"ERROR":
                    out.errors += 1
                else:
                    out.crits += 1
                if not out.sample:
                    out.sample = line.decode("utf-8", "replace").strip()[:SAMPLE_CHARS]
    return pos


def _find_by_inode(live: Path, pos: FilePos) -> Path | None:
    """The rotated file that has `pos`'s inode (logrotate renamed it; we never follow compression)."""
    try:
        names = os.listdir(live.parent)
    except OSError:
        return None
    for name in names:
        if not (name.startswith(live.name + ".") or name.startswith(live.name + "-")) or name.endswith(COMPRESSED):
            continue
        path = live.parent / name
        try:
            if _is(path, path.stat(), pos):
                return path
        except OSError:
            continue
    return None


def _continue(path: Path, pos: FilePos, out: ScanResult, on_line: Callable[[bytes], None] | None) -> FilePos:
    st = path.stat()
    start = pos.offset
    if st.st_size < start:
        out.notes.append(f"{path} was truncated: read from its start")
        start = 0
    end = _read(path, start, out, on_line)
    return _identify(path, path.stat(), end)


def scan(log_file: str, state: dict[str, Any] | None, on_line: Callable[[bytes], None] | None = None) -> ScanResult:
    """Count new error lines of `log_file` after the cursor in `state`; the new cursor is in `.state`."""
    live = Path(log_file)
    out = ScanResult()
    try:
        st: os.stat_result | None = live.stat()
    except FileNotFoundError:
        st = None
    if not state:
        # First run: "since the last run" starts now; old errors are not news. A log that does
        # not exist yet is read from its first line once it appears.
        out.started = True
        out.state = {"current": _identify(live, st, st.st_size).as_dict()} if st else {"waiting": True}
        return out
    current = FilePos.from_dict(state.get("current"))
    previous = FilePos.from_dict(state.get("previous"))
    if previous is not None and not _is(live, st, previous):
        old = _find_by_inode(live, previous)
        previous = _continue(old, previous, out, on_line) if old is not None else None
    truncated = current is not None and st is not None and (st.st_dev, st.st_ino) == (current.dev, current.inode)
    truncated = truncated and st is not None and current is not None and st.st_size < current.offset
    if current is not None and not truncated and not _is(live, st, current):
        # Rotated since the last run: finish the file we were reading, then start the new one.
        old = _find_by_inode(live, current)
        if old is not None:
            previous = _continue(old, current, out, on_line)
        else:
            previous = None
            out.notes.append(f"the rotated {live.name} is gone (compressed or removed): its last lines were not read")
        current = None
    if current is None and st is not None:
        current = FilePos(st.st_dev, st.st_ino, 0)  # a new file: from its first line
    if current is not None:
        current = _continue(live, current, out, on_line)
    else:
        out.notes.append(f"{live} does not exist")
    kept: dict[str, Any] = {k: v.as_dict() for k, v in (("current", current), ("previous", previous)) if v is not None}
    out.state = kept or {"waiting": True}
    return out
