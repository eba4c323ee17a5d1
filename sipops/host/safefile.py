"""Reading a file sipops is given, whatever is there: the one rule for every input file.

Inventory, tuned/<host>.yaml, the user's roles/ and templates/, health.json on a host: each is opened
without following it into anything but a regular file (a directory, FIFO or device is refused before a
byte is read; O_NONBLOCK so a FIFO cannot hang the open), its size is checked with fstat and the read
stops at the cap anyway (a file that grows, or /proc), and the bytes must be UTF-8 (the error names the
line of the first bad byte). A symlink loop, a missing file or no permission is one line too.
Standard library only: the health agent on a host uses it as well.
"""

from __future__ import annotations

import errno
import os
import stat

# Far above any real inventory (a 1000-host fleet is ~200 KB), far below what could take seconds or
# hundreds of MB to parse into Python objects.
MAX_INPUT_BYTES = 1024 * 1024


class UnreadableFile(Exception):
    """The file cannot be used: `message` says why, `line` where when there is a line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def read_text(path: str | os.PathLike[str], limit: int = MAX_INPUT_BYTES) -> str:
    """The whole file as text, or UnreadableFile. FileNotFoundError passes through for callers with a default."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableFile("cannot read: symbolic link loop") from None
        raise UnreadableFile(f"cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UnreadableFile("is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFile("not a regular file")
        if st.st_size > limit:
            raise UnreadableFile(f"file too large ({st.st_size} bytes; the limit is {limit})")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnreadableFile(f"file too large (over {limit} bytes)")
    except OSError as exc:
        raise UnreadableFile(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UnreadableFile(f"not UTF-8 text (byte 0x{data[exc.start]:02x})", line) from None
