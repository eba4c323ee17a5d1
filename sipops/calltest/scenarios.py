"""sipops' own sipp scenarios (templates/sipp/*.xml.j2), rendered per test into a folder of their own.

A user's templates/sipp/ beside the inventory overrides a packaged scenario file by file, like every
other template. Parameters are Jinja's ({{ }}); sipp's own keywords ([...]) pass through untouched.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from sipops.paths import search_dirs

# sip-tester ships these (Debian: /usr/share/sip-tester).
AUDIO_PCAP = Path("/usr/share/sip-tester/g711a.pcap")
PCAP_DIRS = (Path("/usr/share/sip-tester"), Path("/usr/share/doc/sip-tester/pcap"))


def environment(inventory_dir: Path | None) -> jinja2.Environment:
    dirs = [d / "sipp" for d in search_dirs("templates", inventory_dir) if (d / "sipp").is_dir()]
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in dirs]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(env: jinja2.Environment, template: str, folder: Path, **params: Any) -> Path:
    """Render `template` (uac, uas, register) into `folder`/<template>.xml; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{template}.xml"
    path.write_text(env.get_template(f"{template}.xml.j2").render(**params))
    return path


@dataclass(frozen=True)
class Pcap:
    path: Path
    packets: int
    seconds: float


def read_pcap(path: Path) -> Pcap:
    """Packet count and duration of a classic pcap file (what sipp's play_pcap_audio sends)."""
    data = path.read_bytes()
    if len(data) < 24:
        raise ValueError(f"{path}: not a pcap file")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    offset, count, first, last = 24, 0, None, 0.0
    while offset + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[offset : offset + 16])
        stamp = sec + frac / (1e9 if nano else 1e6)
        first = stamp if first is None else first
        last = stamp
        count += 1
        offset += 16 + incl
    return Pcap(path, count, last - (first or last))


def find_audio_pcap() -> Path | None:
    for folder in PCAP_DIRS:
        if (folder / AUDIO_PCAP.name).is_file():
            return folder / AUDIO_PCAP.name
    return None


def write_injection(path: Path, rows: list[tuple[str, ...]]) -> Path:
    """A sipp -inf file: SEQUENTIAL, one `;`-separated row per call."""
    path.write_text("SEQUENTIAL\n" + "".join(";".join(r) + "\n" for r in rows))
    return path
