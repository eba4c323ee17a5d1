"""What may appear in a string variable, by where it lands (role var types; sipops.types.SCALARS).

Every string an inventory gives ends up inside something with its own syntax: opensips.cfg strings and
comments, nft rules, cron lines, systemd unit lines, db_text rows, shell commands of handlers. A kind
says what the value is (a SIP token, a domain, a path, a duration...) and refuses anything else at the
inventory field, so that structured values can be placed as they are. Free text (`text`) is the only
kind that may hold quotes, `$`, `#`, `;`, `%` or backslashes; the templates escape it for each target
with the filters of sipops.escape. No kind accepts control characters (NUL, newline, escape...).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from typing import Any

from sipops.types import BadValue, check_host, check_str

MAX_TEXT = 512  # free text: a description, a comment
MAX_VALUE = 4096  # anything else (paths, URLs, commands)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _string(value: Any, what: str, limit: int = MAX_VALUE) -> str:
    text = check_str(value)
    bad = _CONTROL.search(text)
    if bad:
        raise BadValue(f"{what} must not contain control characters (found {bad.group()!r})")
    if len(text) > limit:
        raise BadValue(f"{what} is {len(text)} characters long; the limit is {limit}")
    return text


def _match(value: Any, what: str, pattern: str, example: str, limit: int = 256) -> str:
    text = _string(value, what, limit)
    if not re.fullmatch(pattern, text):
        shown = f"'{text}'" if len(text) <= 60 else "the value"
        raise BadValue(f"{shown} is not {what} (e.g. {example})")
    return text


def check_text(value: Any) -> str:
    """Free text for descriptions and comments: anything printable, escaped where it lands."""
    return _string(value, "free text", MAX_TEXT)


def check_token(value: Any) -> str:
    """A SIP token / name: letters, digits and . _ - + ~ ! * (RFC 3261 token without quote marks and %)."""
    return _match(value, "a name (letters, digits, . _ - + ~ ! *)", r"[A-Za-z0-9._+~!*-]+", "pstn, edge-1", 128)


def check_hostnet(value: Any) -> str:
    """An IP address, a CIDR or a DNS name."""
    if isinstance(value, str) and "/" in value:
        try:
            return str(ipaddress.ip_network(value, strict=True))
        except ValueError as exc:
            raise BadValue(f"'{value}' is not a valid CIDR ({exc})") from None
    return check_host(value)


# user@host[:port][;param=value] with no quotes, spaces, `$` or backslashes; IPv6 hosts in brackets.
_URI = (
    r"sips?:([A-Za-z0-9._~!*+&=,-]+@)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
    r"(;[A-Za-z0-9._~+-]+(=[A-Za-z0-9._~+-]+)?)*"
)


def check_sipuri(value: Any) -> str:
    text = _match(value, "a SIP URI", _URI, "sip:198.51.100.20:5060;transport=tcp")
    port = re.search(r"\]?:([0-9]{1,5})(;|$)", text.split(":", 1)[1])
    if port and not 1 <= int(port.group(1)) <= 65535:
        raise BadValue(f"port {port.group(1)} of '{text}' is out of range 1-65535")
    return text


def check_regex(value: Any) -> str:
    """A regular expression (POSIX extended, as OpenSIPS matches them); no double quotes."""
    text = _string(value, "a regular expression", 256)
    if '"' in text:
        raise BadValue(f"'{text}': a regular expression here must not contain double quotes")
    try:
        re.compile(text)
    except re.error as exc:
        raise BadValue(f"'{text}' is not a valid regular expression ({exc})") from None
    return text


def check_duration(value: Any) -> str:
    """An nftables/systemd-style duration: 30s, 10m, 1h30m, 1d."""
    text = _match(value, "a duration", r"([0-9]{1,6}[dhms])+", "10m, 1h, 1d")
    if not any(int(n) for n in re.findall(r"[0-9]+", text)):
        raise BadValue(f"'{text}' is a zero duration")
    return text


def check_logsize(value: Any) -> str:
    """A logrotate size: bytes, or a number with k, M or G."""
    return _match(value, "a size (bytes, k, M or G)", r"[0-9]{1,12}[kMG]?", "500M", 16)


_URL_CHARS = r"[A-Za-z0-9._~:/?#\[\]@!&*+,=%-]"


def check_dburl(value: Any) -> str:
    """A database URL: scheme://... with URL characters only (percent-encode the rest of a password)."""
    return _match(
        value, "a database URL", rf"[a-z][a-z0-9+]*://{_URL_CHARS}*", "sqlite:///var/lib/opensips/db.sqlite", 1024
    )


def check_strict_url(value: Any) -> str:
    """http(s) URL of URL characters only: it lands in apt sources lines and shell commands."""
    return _match(
        value,
        "an http:// or https:// URL",
        rf"https?://[A-Za-z0-9.-]+(:[0-9]+)?(/{_URL_CHARS}*)?",
        "https://apt.example.net",
        2048,
    )


def check_path_strict(value: Any) -> str:
    """An absolute path of ordinary characters (it lands in unit lines, cron lines, cfg strings)."""
    text = _string(value, "a path")
    if not text.startswith(("/", "~")):
        raise BadValue(f"'{text}' is not an absolute path")
    if not re.fullmatch(r"~?[A-Za-z0-9._/+@=,:-]*", text):
        bad = re.search(r"[^A-Za-z0-9._/+@=,:~-]", text)
        found = bad.group() if bad else "~"
        raise BadValue(f"'{text}': a path here may hold letters, digits and . _ / + @ = , : - only (found {found!r})")
    if "/../" in text + "/":
        raise BadValue(f"'{text}' must not contain '..'")
    return text


def check_url_or_path(value: Any) -> str:
    text = _string(value, "a URL or path")
    return check_strict_url(text) if "://" in text else check_path_strict(text)


def check_command(value: Any) -> str:
    """A command line (cron, systemd ExecStart, the alert command): one line, escaped where it lands."""
    text = _string(value, "a command", 1024)
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise BadValue(f"'{text}' is not a command line ({exc})") from None
    if not words:
        raise BadValue("the command is empty")
    return text


_SYSCTL_KEY = re.compile(r"[a-z0-9_][a-z0-9_.-]*(/[a-z0-9_.-]+)*")


def check_sysctl(value: Any) -> dict[str, Any]:
    """sysctl.d settings: dotted keys and one-line values of ordinary characters."""
    if not isinstance(value, dict):
        raise BadValue("expected a mapping of kernel setting to value")
    out: dict[str, Any] = {}
    for key, val in value.items():
        if not _SYSCTL_KEY.fullmatch(str(key)) or len(str(key)) > 128:
            raise BadValue(f"'{key}' is not a kernel setting name (e.g. net.core.somaxconn)", (key,))
        if isinstance(val, bool) or not isinstance(val, (int, str)):
            raise BadValue("expected a number or a string of numbers", (key,))
        if isinstance(val, str) and not re.fullmatch(r"[A-Za-z0-9 ._:,/-]{1,256}", val):
            raise BadValue(f"'{val}' is not a sysctl value (numbers, words, spaces)", (key,))
        out[str(key)] = val
    return out


def check_resources(value: Any) -> str:
    """load_balancer capacities: name=number pairs separated by ';' (pstn=32;transc=5)."""
    return _match(
        value, "load_balancer resources", r"[A-Za-z0-9_]+=[0-9]{1,9}(;[A-Za-z0-9_]+=[0-9]{1,9})*", "pstn=32;transc=5"
    )
