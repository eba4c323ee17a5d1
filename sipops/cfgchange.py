"""What kind of change a new opensips.cfg is to the live one: routes only (OpenSIPS reloads them over MI
`reload_routes`, no restart), comments only (nothing to do), or anything else (a restart).

OpenSIPS' `reload_routes` re-parses the cfg file for its route blocks only: global parameters, loadmodule
and modparam lines keep their startup values until a restart. So a change is "routes" only when
everything outside the route blocks is the same once comments and blank space are set aside.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

ROUTES = "routes"  # only route blocks changed: reload them
NOTHING = "nothing"  # only comments or blank space changed
RESTART = "restart"  # globals, modules, modparams, sockets: OpenSIPS reads them at start only

_ROUTE_HEAD = re.compile(
    r"(route|failure_route|onreply_route|branch_route|local_route|startup_route|timer_route|event_route|error_route)"
    r"\s*(\[[^\]]*\])?\s*\{"
)


@dataclass(frozen=True)
class CfgChange:
    kind: str  # ROUTES, NOTHING or RESTART
    reason: str  # e.g. "route[relay] changed", "modparam("tm", "fr_timeout", 5) changed"


def _strip_comments(text: str) -> str:
    """The cfg without `#` and `/* */` comments; quoted strings kept whole (a '#' in a string is text)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _block_end(text: str, start: int) -> int:
    """Index just past the `}` closing the `{` at start (strings skipped); len(text) if unbalanced."""
    depth, i, n = 0, start, len(text)
    while i < n:
        c = text[i]
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _normal(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def split_cfg(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """(global lines, {route name: body lines}), comments and blank space set aside."""
    code = _strip_comments(text)
    globals_parts: list[str] = []
    routes: dict[str, list[str]] = {}
    pos = 0
    for m in _ROUTE_HEAD.finditer(code):
        if m.start() < pos:  # inside a block already taken
            continue
        line_start = code.rfind("\n", 0, m.start()) + 1
        if code[line_start : m.start()].strip():  # a word ending in "route" inside a statement
            continue
        globals_parts.append(code[pos : m.start()])
        end = _block_end(code, m.end() - 1)
        name = m.group(1) + (m.group(2) or "").replace(" ", "")
        routes[name] = _normal(code[m.end() : end - 1])
        pos = end
    globals_parts.append(code[pos:])
    return _normal("".join(globals_parts)), routes


def classify(old: str, new: str) -> CfgChange:
    """What applying `new` over the running `old` takes."""
    old_globals, old_routes = split_cfg(old)
    new_globals, new_routes = split_cfg(new)
    if old_globals != new_globals:
        changed = next(
            (line for tag, line in _changed_lines(old_globals, new_globals) if tag == "+"),
            next((line for _, line in _changed_lines(old_globals, new_globals)), "a global line"),
        )
        return CfgChange(RESTART, f"{_short(changed)} changed")
    names = [n for n in dict.fromkeys([*old_routes, *new_routes]) if old_routes.get(n) != new_routes.get(n)]
    if not names:
        return CfgChange(NOTHING, "comments or blank space only")
    words = [f"{n} {_how(n in old_routes, n in new_routes)}" for n in names]
    return CfgChange(ROUTES, ", ".join(words[:4]) + (f" and {len(words) - 4} more" if len(words) > 4 else ""))


def _how(before: bool, after: bool) -> str:
    return "added" if not before else "removed" if not after else "changed"


def _changed_lines(old: list[str], new: list[str]) -> list[tuple[str, str]]:
    out = []
    for line in difflib.unified_diff(old, new, lineterm="", n=0):
        if line.startswith(("+++", "---", "@@")):
            continue
        out.append((line[0], line[1:]))
    return out


def _short(line: str) -> str:
    return line if len(line) <= 80 else line[:77] + "..."
