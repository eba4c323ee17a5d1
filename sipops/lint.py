"""Structural lint of a rendered opensips.cfg, before any host sees it.

Checks what `opensips -C` would reject, without an OpenSIPS install: every function called in a
route belongs to the core or a loaded module (with a plausible number of arguments), every route
that is called or armed (t_on_failure/t_on_branch/t_on_reply) exists, routes are defined once,
every modparam names a loaded module and a parameter it has, sockets parse and their transport
is loaded, braces balance. The export tables are sipops.opensips_exports (hand-written, for the
modules our templates load) and, for every other module of OpenSIPS 3.4 and 3.6, the table
generated from the OpenSIPS sources (sipops/data/opensips_exports.json), read on first lint.

A module in neither table (third-party, a module of your own) is allowed: its modparams are not
checked, and a function no known module exports is taken to be one of its own. What the lint
cannot see, `opensips -C` on the host checks before the file goes live.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sipops.errors import InputError
from sipops.opensips_exports import CORE_FUNCTIONS, KEYWORDS, MODULES, Export, ModuleExports
from sipops.paths import cache_dir

if TYPE_CHECKING:
    from sipops.render import HostRender

CFG_TEMPLATE = "opensips/opensips.cfg.j2"
GENERATED_EXPORTS = Path(__file__).parent / "data" / "opensips_exports.json"

ROUTE_KINDS = {
    "route",
    "failure_route",
    "onreply_route",
    "branch_route",
    "local_route",
    "startup_route",
    "timer_route",
    "error_route",
    "event_route",
}
# Functions whose first argument names a route of the given kind.
ROUTE_ARMING = {"t_on_failure": "failure_route", "t_on_branch": "branch_route", "t_on_reply": "onreply_route"}
SOCKET_PROTOS = {"udp", "tcp", "tls", "ws", "wss", "sctp", "hep_udp", "hep_tcp", "bin", "bins", "smpp", "ipsec"}

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)
_HOSTPORT = re.compile(r"^(\[[^\]]+\]|[^\s:\[\]]+)(?::(\d+))?$")


@dataclass(frozen=True)
class LintError:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Token:
    kind: str  # id, str, num, pv, op
    text: str
    line: int


_TOKEN = re.compile(
    r"""(?P<nl>\n)|(?P<ws>[ \t\r]+)|(?P<comment>\#[^\n]*)|(?P<block>/\*.*?\*/)
    |(?P<str>"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')
    |(?P<id>[A-Za-z_][A-Za-z0-9_.\-]*[A-Za-z0-9_]|[A-Za-z_])|(?P<num>\d+)|(?P<op>.)""",
    re.X | re.S,
)


def tokenize(text: str) -> list[Token]:
    """Tokens of a cfg, comments and whitespace dropped; `$...` pseudo-variables are one token."""
    tokens: list[Token] = []
    line, pos = 1, 0
    while pos < len(text):
        if text[pos] == "$":
            end = _pv_end(text, pos + 1)
            tokens.append(Token("pv", text[pos:end], line))
            line += text.count("\n", pos, end)
            pos = end
            continue
        m = _TOKEN.match(text, pos)
        assert m is not None  # `.` matches any other character
        kind = m.lastgroup or "op"
        if kind in ("str", "id", "num", "op"):
            tokens.append(Token(kind, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    return tokens


def _pv_end(text: str, pos: int) -> int:
    """End of a pseudo-variable: $name, $name(x), $name(x)[i], $(name(x){tr}), $var(x)..."""
    while pos < len(text) and (text[pos].isalnum() or text[pos] == "_"):
        pos += 1
    for opener, closer in (("(", ")"), ("[", "]")):
        if pos < len(text) and text[pos] == opener:
            depth = 0
            while pos < len(text):
                depth += {opener: 1, closer: -1}.get(text[pos], 0)
                pos += 1
                if depth == 0:
                    break
    return pos


def _string(tok: Token) -> str:
    return tok.text[1:-1] if tok.kind == "str" else tok.text


@functools.cache
def all_modules() -> dict[str, ModuleExports]:
    """Every module the lint knows: the generated table, with the hand-written MODULES on top."""
    data = json.loads(GENERATED_EXPORTS.read_text())
    table: dict[str, ModuleExports] = {}
    for name, mod in data["modules"].items():
        functions: dict[str, Export] = {}
        for fn, spec in mod["functions"].items():
            functions[fn] = (
                (int(spec[0]), int(spec[1]), str(spec[2])) if len(spec) > 2 else (int(spec[0]), int(spec[1]))
            )
        table[name] = ModuleExports(functions=functions, params={p: str(only) for p, only in mod["params"].items()})
    table.update(MODULES)
    return table


def _visible(export: Export, version: str | None) -> bool:
    return len(export) < 3 or version is None or export[-1] == version


class _Linter:
    def __init__(self, text: str, file: str, version: str | None) -> None:
        self.text = text
        self.file = file
        self.version = version
        self.errors: list[LintError] = []
        self.toks = tokenize(text)
        self.modules: dict[str, int] = {}
        self.modparams: list[tuple[Token, list[Token]]] = []
        self.sockets: list[tuple[str, int]] = []
        self.routes: dict[tuple[str, str], int] = {}
        self.calls: list[tuple[Token, int]] = []  # function token, argument count
        self.refs: list[tuple[str, str, int]] = []  # kind, name, line
        self.table = all_modules()

    def error(self, line: int, message: str) -> None:
        self.errors.append(LintError(self.file, line, message))

    @property
    def unknown_modules(self) -> list[str]:
        """Loaded modules sipops has no export table for: their functions and modparams go unchecked."""
        return [m for m in self.modules if m not in self.table]

    def run(self) -> list[LintError]:
        balanced = self._braces_balanced()
        self._top_level()
        self._check_modparams()
        self._check_sockets()
        if balanced:  # with a stray brace, routes swallow each other: only the brace error is useful
            self._check_calls()
            self._check_refs()
        return sorted(self.errors, key=lambda e: e.line)

    def _braces_balanced(self) -> bool:
        stack: list[Token] = []
        ok = True
        for t in self.toks:
            if t.text == "{" and t.kind == "op":
                stack.append(t)
            elif t.text == "}" and t.kind == "op":
                if not stack:
                    self.error(t.line, "unbalanced braces: '}' closes nothing")
                    ok = False
                else:
                    stack.pop()
        for t in stack:
            self.error(t.line, "unbalanced braces: '{' is never closed")
            ok = False
        return ok

    def _top_level(self) -> None:
        toks, i = self.toks, 0
        while i < len(toks):
            t = toks[i]
            if t.kind == "id" and t.text in ROUTE_KINDS and i + 1 < len(toks) and toks[i + 1].text in ("[", "{"):
                i = self._route(i)
            elif t.kind == "id" and t.text == "loadmodule" and i + 1 < len(toks):
                name = Path(_string(toks[i + 1])).name.removesuffix(".so")
                if name in self.modules:
                    self.error(t.line, f"module '{name}' is loaded twice (first at line {self.modules[name]})")
                self.modules.setdefault(name, t.line)
                i += 2
            elif t.kind == "id" and t.text == "modparam" and i + 1 < len(toks) and toks[i + 1].text == "(":
                end = self._close(i + 1)
                self.modparams.append((t, self._args(i + 1, end)))
                i = end + 1
            elif t.kind == "id" and t.text in ("socket", "listen") and i + 1 < len(toks) and toks[i + 1].text == "=":
                raw = self.text.splitlines()[t.line - 1].split("=", 1)[1].split("#", 1)[0].strip()
                self.sockets.append((raw, t.line))
                i += 2
                while i < len(toks) and toks[i].line == t.line:
                    i += 1
            else:
                i += 1

    def _route(self, i: int) -> int:
        kind_tok = self.toks[i]
        name, j = "", i + 1
        if self.toks[j].text == "[":
            close = j
            while close < len(self.toks) and self.toks[close].text != "]":
                close += 1
            parts = [_string(t) for t in self.toks[j + 1 : close] if t.text != ","]
            name = parts[0] if parts else ""
            j = close + 1
        key = (kind_tok.text, name)
        label = f"{kind_tok.text}[{name}]" if name else kind_tok.text
        if key in self.routes:
            self.error(kind_tok.line, f"duplicate {label} (first defined at line {self.routes[key]})")
        else:
            self.routes[key] = kind_tok.line
        if j >= len(self.toks) or self.toks[j].text != "{":
            self.error(kind_tok.line, f"{label} has no body")
            return j
        end = self._close(j)
        self._body(j + 1, end)
        return end + 1

    def _close(self, open_idx: int) -> int:
        """Index of the bracket closing the one at open_idx."""
        opener = self.toks[open_idx].text
        closer = {"(": ")", "{": "}", "[": "]"}[opener]
        depth = 0
        for k in range(open_idx, len(self.toks)):
            if self.toks[k].kind != "op":
                continue
            if self.toks[k].text == opener:
                depth += 1
            elif self.toks[k].text == closer:
                depth -= 1
                if depth == 0:
                    return k
        return len(self.toks) - 1

    def _args(self, open_idx: int, close_idx: int) -> list[Token]:
        """First token of each top-level argument (an empty argument is a ',' token)."""
        args: list[Token] = []
        depth, expect = 0, True
        for t in self.toks[open_idx + 1 : close_idx]:
            if t.kind == "op" and t.text in "([{":
                depth += 1
            elif t.kind == "op" and t.text in ")]}":
                depth -= 1
            if depth == 0 and t.kind == "op" and t.text == ",":
                if expect:
                    args.append(t)
                expect = True
            elif expect:
                args.append(t)
                expect = False
        if args and expect:  # trailing empty argument: f(a, )
            args.append(self.toks[close_idx])
        return args

    def _body(self, start: int, end: int) -> None:
        for k in range(start, end):
            t = self.toks[k]
            if t.kind != "id" or k + 1 >= end or self.toks[k + 1].text != "(":
                continue
            if t.text in KEYWORDS and t.text != "route":
                continue
            close = self._close(k + 1)
            args = self._args(k + 1, close)
            if t.text == "route":
                if args:
                    self.refs.append(("route", _string(args[0]), t.line))
                continue
            self.calls.append((t, len(args)))
            if t.text in ROUTE_ARMING and args:
                self.refs.append((ROUTE_ARMING[t.text], _string(args[0]), t.line))

    def _exports(self, module: str) -> dict[str, Export]:
        return self.table[module].functions if module in self.table else {}

    def _check_modparams(self) -> None:
        for tok, args in self.modparams:
            if len(args) != 3:
                self.error(tok.line, f"modparam takes 3 arguments (module, parameter, value), got {len(args)}")
                continue
            module, param = _string(args[0]), _string(args[1])
            if module not in self.modules:
                self.error(tok.line, f"modparam for module '{module}', which is not loaded")
            elif module in self.table:
                only = self.table[module].params.get(param)
                if only is None:
                    self.error(tok.line, f"module '{module}' has no parameter '{param}'")
                elif only and self.version and only != self.version:
                    self.error(tok.line, f"parameter '{param}' of '{module}' exists in OpenSIPS {only} only")

    def _check_calls(self) -> None:
        for tok, nargs in self.calls:
            name = tok.text
            export = CORE_FUNCTIONS.get(name)
            where = "the core"
            if export is None or not _visible(export, self.version):
                export = None
                for module in self.modules:
                    candidate = self._exports(module).get(name)
                    if candidate is not None and _visible(candidate, self.version):
                        export, where = candidate, f"module {module}"
                        break
            if export is None:
                owners = sorted(m for m, e in self.table.items() if name in e.functions)
                if owners:
                    self.error(tok.line, f"{name}() belongs to module {' or '.join(owners)}, which is not loaded")
                elif not self.unknown_modules:
                    self.error(tok.line, f"unknown function {name}()")
                continue
            lo, hi = export[0], export[1]
            if not lo <= nargs <= hi:
                want = str(lo) if lo == hi else f"{lo} to {hi}"
                self.error(tok.line, f"{name}() of {where} takes {want} arguments, got {nargs}")

    def _check_refs(self) -> None:
        for kind, name, line in self.refs:
            if (kind, name) not in self.routes:
                self.error(line, f"{kind}[{name}] is used but not defined")

    def _check_sockets(self) -> None:
        for raw, line in self.sockets:
            problem = socket_problem(raw)
            if problem:
                self.error(line, f"socket '{raw}': {problem}")
                continue
            proto = raw.split(":", 1)[0]
            if f"proto_{proto}" not in self.modules:
                self.error(line, f"socket '{raw}' needs loadmodule \"proto_{proto}.so\"")


def socket_problem(raw: str) -> str | None:
    """Why `proto:address:port [as host[:port]] [use_workers N]` does not parse, or None."""
    words = raw.split()
    if not words:
        return "empty"
    proto, sep, rest = words[0].partition(":")
    if not sep or proto not in SOCKET_PROTOS:
        return f"expected proto:address:port with proto one of {', '.join(sorted(SOCKET_PROTOS))}"
    problem = _hostport_problem(rest, need_port=True)
    if problem:
        return problem
    tail = words[1:]
    while tail:
        if tail[0] == "as" and len(tail) >= 2:
            problem = _hostport_problem(tail[1], need_port=False)
            if problem:
                return f"advertised {problem}"
            tail = tail[2:]
        elif tail[0] in ("use_workers", "use_children") and len(tail) >= 2 and tail[1].isdigit():
            tail = tail[2:]
        elif tail[0] in ("anycast", "frag", "reuse_port"):
            tail = tail[1:]
        else:
            return f"unexpected '{tail[0]}'"
    return None


def _hostport_problem(text: str, need_port: bool) -> str | None:
    m = _HOSTPORT.match(text)
    if not m:
        return f"'{text}' is not address:port (IPv6 goes in brackets)"
    host, port = m.group(1), m.group(2)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"'{host}' is not an IPv6 address"
    elif host != "*" and not _HOSTNAME.match(host):
        return f"'{host}' is not an address or host name"
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"'{host}' is not an IPv4 address"
    if port is None:
        return "missing port" if need_port else None
    if not 1 <= int(port) <= 65535:
        return f"port {port} is out of range 1-65535"
    return None


def lint_cfg(text: str, file: str = "opensips.cfg", version: str | None = None) -> list[LintError]:
    """Lint the text of an opensips.cfg; `version` (3.4/3.6) enables release-specific checks."""
    return _Linter(text, file, version).run()


def check_rendered(results: list[HostRender], out: Path | None) -> None:
    """Lint every rendered opensips.cfg; raise InputError at the first problem (path as written under out)."""
    for res in results:
        for f in res.files:
            if f.src != CFG_TEMPLATE:
                continue
            where = out / res.host.name / f.dest.lstrip("/") if out is not None else Path(res.host.name + f.dest)
            version = res.host.vars.get("opensips_version")
            passed = _passed_marker(f.content, version)
            if passed is not None and passed.exists():
                continue
            errors = lint_cfg(f.content.decode(), str(where), version)
            if not errors and passed is not None:
                with contextlib.suppress(OSError):
                    passed.touch()
            if errors:
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                raise InputError(f"{errors[0].message}{more}", file=errors[0].file, line=errors[0].line)


@functools.cache
def _lint_fingerprint() -> bytes:
    """The linter's own code and module tables: a new sipops lints every cfg afresh."""
    from sipops import opensips_exports

    h = hashlib.sha256()
    for mod in (__file__, opensips_exports.__file__, GENERATED_EXPORTS):
        h.update(Path(mod).read_bytes())
    return h.digest()


def _passed_marker(content: bytes, version: object) -> Path | None:
    """An empty file under ~/.cache/sipops/lint whose name says: this exact cfg passed this linter.

    Linting each host's cfg was a tenth of a no-op push's CPU; only passes are remembered.
    """
    base = cache_dir("lint")
    if base is None:
        return None
    key = hashlib.sha256(_lint_fingerprint() + str(version).encode() + b"\0" + content).hexdigest()
    return base / key
