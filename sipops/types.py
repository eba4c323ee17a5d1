"""Value types for inventory fields and role variables, each a checker that names what is wrong."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")


class BadValue(Exception):
    """A value does not fit its type; `path` is relative to where checking started."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"'{value}'" if len(value) < 60 else "a long string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def check_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadValue(f"expected a string, got {_describe(value)}")
    return str(value)


def check_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadValue(f"expected an integer, got {_describe(value)}")
    return value


def check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadValue(f"expected true or false, got {_describe(value)}")
    return value


def check_port(value: Any) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadValue(f"expected a port number (1-65535), got {_describe(value)}")
    if not 1 <= value <= 65535:
        raise BadValue(f"port {value} is out of range 1-65535")
    return value


def check_ip(value: Any) -> str:
    if not isinstance(value, str):
        raise BadValue(f"expected an IPv4 or IPv6 address, got {_describe(value)}")
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        raise BadValue(f"'{value}' is not a valid IPv4 or IPv6 address") from None


def check_host(value: Any) -> str:
    """An IP address literal or a DNS name."""
    if not isinstance(value, str):
        raise BadValue(f"expected an address or DNS name, got {_describe(value)}")
    text = value.strip("[]")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", text) or ":" in text or not _HOSTNAME.match(text):
        raise BadValue(f"'{value}' is not a valid IP address or DNS name")
    return text


def check_cidr(value: Any) -> str:
    if not isinstance(value, str):
        raise BadValue(f"expected a CIDR such as 192.0.2.0/24, got {_describe(value)}")
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise BadValue(f"'{value}' is not a valid CIDR ({exc})") from None


def check_size(value: Any) -> int:
    """Memory size in MB: 512 or '512M' or '2G'."""
    if isinstance(value, str):
        m = re.fullmatch(r"(\d+)\s*([MmGg]?)[Bb]?", value.strip())
        if not m:
            raise BadValue(f"'{value}' is not a size in MB (e.g. 256 or 2G)")
        return int(m.group(1)) * (1024 if m.group(2).lower() == "g" else 1)
    return check_int(value)


def check_any_str(value: Any) -> str:
    """`str`: any string but a NUL, which no file format can hold (the sipops.kinds say more)."""
    text = check_str(value)
    if "\x00" in text:
        raise BadValue("a string must not contain NUL characters")
    return text


SCALARS: dict[str, Callable[[Any], Any]] = {
    "str": check_any_str,
    "int": check_int,
    "bool": check_bool,
    "port": check_port,
    "ip": check_ip,
    "host": check_host,
    "cidr": check_cidr,
    "size": check_size,
}


@dataclass
class TypeSpec:
    """A variable's type: a scalar, `enum` with choices, `list` of items, `record` of fields, or `map`."""

    kind: str
    choices: list[str] = field(default_factory=list)
    items: TypeSpec | None = None
    fields: dict[str, FieldSpec] = field(default_factory=dict)
    minimum: int | None = None
    maximum: int | None = None
    nullable: bool = False

    def check(self, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        if self.kind in SCALARS:
            out = SCALARS[self.kind](value)
            if isinstance(out, int) and not isinstance(out, bool):
                if self.minimum is not None and out < self.minimum:
                    raise BadValue(f"{out} is below the minimum {self.minimum}")
                if self.maximum is not None and out > self.maximum:
                    raise BadValue(f"{out} is above the maximum {self.maximum}")
            return out
        if self.kind == "enum":
            if isinstance(value, (int, float)) and not isinstance(value, bool) and str(value) in self.choices:
                return str(value)  # `opensips_version: 3.6` unquoted
            if value not in self.choices:
                raise BadValue(f"expected one of {', '.join(map(str, self.choices))}, got {_describe(value)}")
            return value
        if self.kind == "any":
            return value
        if self.kind == "map":
            if not isinstance(value, dict):
                raise BadValue(f"expected a mapping, got {_describe(value)}")
            if self.items is None:
                return value
            return {k: _at(k, self.items.check, v) for k, v in value.items()}
        if self.kind == "list":
            if not isinstance(value, list):
                raise BadValue(f"expected a list, got {_describe(value)}")
            assert self.items is not None
            return [_at(i, self.items.check, v) for i, v in enumerate(value)]
        if self.kind == "record":
            return check_record(value, self.fields)
        raise BadValue(f"unknown type '{self.kind}'")


@dataclass
class FieldSpec:
    type: TypeSpec
    required: bool = False
    default: Any = None
    doc: str = ""


def _at(key: str | int, fn: Callable[[Any], Any], value: Any) -> Any:
    try:
        return fn(value)
    except BadValue as exc:
        raise BadValue(exc.message, (key, *exc.path)) from None


def suggest(word: str, options: list[str]) -> str:
    """`, did you mean 'x'?` when a close match exists."""
    import difflib

    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_key(key: str, options: list[str], what: str = "key") -> BadValue:
    hint = suggest(key, options)
    if not hint:
        hint = f"; known: {', '.join(sorted(options))}" if len(options) <= 12 else ""
    return BadValue(f"unknown {what} '{key}'{hint}", (key,))


def check_record(value: Any, fields: dict[str, FieldSpec]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadValue(f"expected a mapping, got {_describe(value)}")
    out: dict[str, Any] = {}
    for key, val in value.items():
        if key not in fields:
            raise unknown_key(key, list(fields))
        out[key] = _at(key, fields[key].type.check, val)
    for name, spec in fields.items():
        if name not in out:
            if spec.required:
                raise BadValue(f"missing required field '{name}'")
            if spec.default is not None:
                out[name] = spec.default
    return out


def parse_type(spec: Any) -> TypeSpec:
    """Build a TypeSpec from a role file's `type:` declaration (string or mapping)."""
    if isinstance(spec, str):
        text = spec.strip()
        nullable = text.endswith("?")
        text = text.rstrip("?")
        m = re.fullmatch(r"list\[(.+)\]", text)
        if m:
            return TypeSpec("list", items=parse_type(m.group(1)), nullable=nullable)
        m = re.fullmatch(r"map\[(.+)\]", text)
        if m:
            return TypeSpec("map", items=parse_type(m.group(1)), nullable=nullable)
        m = re.fullmatch(r"enum\[(.+)\]", text)
        if m:
            return TypeSpec("enum", choices=[c.strip() for c in m.group(1).split(",")], nullable=nullable)
        m = re.fullmatch(r"int\[(-?\d*)\.\.(-?\d*)\]", text)
        if m:
            lo, hi = m.groups()
            return TypeSpec("int", minimum=int(lo) if lo else None, maximum=int(hi) if hi else None, nullable=nullable)
        if text in SCALARS or text in ("any", "map"):
            return TypeSpec(text, nullable=nullable)
        raise BadValue(f"unknown type '{spec}'")
    if isinstance(spec, dict):
        kind = spec.get("type", "record")
        if kind == "record":
            raw = spec.get("fields")
            if not isinstance(raw, dict):
                raise BadValue("a record type needs 'fields'")
            return TypeSpec("record", fields={k: parse_field(v, k) for k, v in raw.items()})
        if kind == "list":
            return TypeSpec("list", items=parse_type(spec.get("items", "any")))
        return parse_type(kind)
    raise BadValue(f"a type must be a name or a mapping, got {_describe(spec)}")


def parse_field(spec: Any, name: str) -> FieldSpec:
    if isinstance(spec, str):
        return FieldSpec(parse_type(spec))
    if not isinstance(spec, dict):
        raise BadValue(f"field '{name}' must be a type name or a mapping", (name,))
    allowed = {"type", "required", "default", "doc", "fields", "items"}
    for key in spec:
        if key not in allowed:
            raise BadValue(unknown_key(key, sorted(allowed)).message, (name, key))
    tspec = parse_type({k: v for k, v in spec.items() if k in ("type", "fields", "items")})
    return FieldSpec(tspec, bool(spec.get("required", False)), spec.get("default"), str(spec.get("doc", "")))


# The string kinds by where a value lands (sipops.kinds), `path` and `url` among them.
from sipops import kinds as _kinds  # noqa: E402

SCALARS.update(
    path=_kinds.check_path_strict,
    url=_kinds.check_strict_url,
    text=_kinds.check_text,
    token=_kinds.check_token,
    hostnet=_kinds.check_hostnet,
    sipuri=_kinds.check_sipuri,
    regex=_kinds.check_regex,
    duration=_kinds.check_duration,
    logsize=_kinds.check_logsize,
    dburl=_kinds.check_dburl,
    urlpath=_kinds.check_url_or_path,
    command=_kinds.check_command,
    sysctl=_kinds.check_sysctl,
    resources=_kinds.check_resources,
)
