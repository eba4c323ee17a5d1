"""Roles: what a host does (registrar, proxy, loadbalancer…) and everything it brings.

A role file declares its variables (typed, with defaults), the OpenSIPS modules it loads,
packages, services, firewall ports, templates (each with its validator and handlers) and handlers.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipops.errors import InputError
from sipops.paths import search_dirs
from sipops.types import BadValue, FieldSpec, parse_field, unknown_key
from sipops.yamlpos import Located, dotted, load_located

BASE_ROLE = "common"
_ROLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class TemplateSpec:
    src: str
    dest: str  # may contain Jinja expressions
    mode: str = "0644"
    owner: str = "root"
    group: str = "root"
    validate: str | None = None  # command run on the host against the staged file; `{path}` is replaced
    notify: tuple[str, ...] = ()
    when: str | None = None  # Jinja expression; the file is managed only when it is true
    # When `when` is false and the file is on the host, push removes it (backed up like any change),
    # running this command on the host first ("" for none). Without it such a file is left alone.
    retire: str | None = None
    # opensips.cfg: the handlers to notify instead of `notify` when only its route blocks changed
    # (sipops.cfgchange): OpenSIPS reloads routes over MI without a restart.
    notify_routes: tuple[str, ...] | None = None
    line: int = 0


@dataclass(frozen=True)
class PortSpec:
    proto: str
    port: str  # a number or a Jinja expression
    source: str = "any"  # any | allowlist
    comment: str = ""


@dataclass
class Role:
    name: str
    file: str
    description: str = ""
    requires: list[str] = field(default_factory=list)
    vars: dict[str, FieldSpec] = field(default_factory=dict)
    var_lines: dict[str, int] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)
    opensips_packages: list[str] = field(default_factory=list)
    packages: dict[str, list[str]] = field(default_factory=dict)
    services: list[str] = field(default_factory=list)
    ports: list[PortSpec] = field(default_factory=list)
    templates: list[TemplateSpec] = field(default_factory=list)
    handlers: dict[str, str] = field(default_factory=dict)


_ROLE_KEYS = [
    "description",
    "requires",
    "vars",
    "modules",
    "opensips_packages",
    "packages",
    "services",
    "ports",
    "templates",
    "handlers",
]
_TEMPLATE_KEYS = ["src", "dest", "mode", "owner", "group", "validate", "notify", "notify_routes", "when", "retire"]
_PORT_KEYS = ["proto", "port", "from", "comment"]


def _fail(doc: Located, path: tuple[str | int, ...], message: str) -> InputError:
    return InputError(message, file=doc.file, line=doc.line(path), field=dotted(path))


def _str_list(doc: Located, path: tuple[str | int, ...], value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(doc, path, "expected a list of strings")
    return list(value)


def parse_role(name: str, doc: Located) -> Role:
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise _fail(doc, (), "a role file must be a mapping")
    role = Role(name=name, file=doc.file)
    for key, value in data.items():
        if key not in _ROLE_KEYS:
            exc = unknown_key(key, _ROLE_KEYS)
            raise _fail(doc, (key,), exc.message)
        if key == "description":
            role.description = str(value)
        elif key in ("requires", "modules", "opensips_packages", "services"):
            setattr(role, key, _str_list(doc, (key,), value))
        elif key == "packages":
            if not isinstance(value, dict):
                raise _fail(doc, (key,), "expected a mapping of package manager to list, e.g. apt: [...]")
            for pm, pkgs in value.items():
                if pm not in ("apt", "dnf", "yum"):
                    raise _fail(doc, (key, pm), unknown_key(pm, ["apt", "dnf", "yum"], "package manager").message)
                role.packages[pm] = _str_list(doc, (key, pm), pkgs)
        elif key == "vars":
            if not isinstance(value, dict):
                raise _fail(doc, (key,), "expected a mapping of variable name to its declaration")
            for vname, spec in value.items():
                try:
                    role.vars[vname] = parse_field(spec, vname)
                except BadValue as exc:
                    path = ("vars", vname, *exc.path[1:]) if exc.path else ("vars", vname)
                    raise _fail(doc, path, exc.message) from None
                role.var_lines[vname] = doc.line(("vars", vname)) or 0
                default = role.vars[vname].default
                if default is not None:
                    try:
                        role.vars[vname] = FieldSpec(
                            role.vars[vname].type,
                            role.vars[vname].required,
                            role.vars[vname].type.check(default),
                            role.vars[vname].doc,
                        )
                    except BadValue as exc:
                        raise _fail(doc, ("vars", vname, "default", *exc.path), exc.message) from None
        elif key == "ports":
            role.ports = [_parse_port(doc, i, p) for i, p in enumerate(_list(doc, (key,), value))]
        elif key == "templates":
            role.templates = [_parse_template(doc, i, t) for i, t in enumerate(_list(doc, (key,), value))]
        elif key == "handlers":
            if not isinstance(value, dict):
                raise _fail(doc, (key,), "expected a mapping of handler name to command")
            for hname, cmd in value.items():
                if not isinstance(cmd, str):
                    raise _fail(doc, (key, hname), "a handler is a shell command string")
                role.handlers[hname] = cmd
    return role


def _list(doc: Located, path: tuple[str | int, ...], value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(doc, path, "expected a list")
    return value


def _parse_port(doc: Located, i: int, raw: Any) -> PortSpec:
    path: tuple[str | int, ...] = ("ports", i)
    if not isinstance(raw, dict):
        raise _fail(doc, path, "expected a mapping with proto and port")
    for key in raw:
        if key not in _PORT_KEYS:
            raise _fail(doc, (*path, key), unknown_key(key, _PORT_KEYS).message)
    proto = raw.get("proto")
    if proto not in ("udp", "tcp"):
        raise _fail(doc, (*path, "proto"), f"expected udp or tcp, got {proto!r}")
    if "port" not in raw:
        raise _fail(doc, path, "missing required field 'port'")
    source = raw.get("from", "any")
    if source not in ("any", "allowlist"):
        raise _fail(doc, (*path, "from"), f"expected any or allowlist, got {source!r}")
    return PortSpec(proto, str(raw["port"]), source, str(raw.get("comment", "")))


def _parse_template(doc: Located, i: int, raw: Any) -> TemplateSpec:
    path: tuple[str | int, ...] = ("templates", i)
    if not isinstance(raw, dict):
        raise _fail(doc, path, "expected a mapping with src and dest")
    for key in raw:
        if key not in _TEMPLATE_KEYS:
            raise _fail(doc, (*path, key), unknown_key(key, _TEMPLATE_KEYS).message)
    for req in ("src", "dest"):
        if not isinstance(raw.get(req), str):
            raise _fail(doc, (*path, req), f"missing or non-string '{req}'")
    mode = str(raw.get("mode", "0644"))
    if not (len(mode) == 4 and all(c in "01234567" for c in mode)):
        raise _fail(doc, (*path, "mode"), f"'{mode}' is not an octal mode like 0644 (quote it in YAML)")
    notify = raw.get("notify", [])
    if isinstance(notify, str):
        notify = [notify]
    retire = raw.get("retire")
    if retire is not None and not isinstance(retire, str):
        raise _fail(doc, (*path, "retire"), 'expected the command to run before removing the file ("" for none)')
    if retire is not None and raw.get("when") is None:
        raise _fail(doc, (*path, "retire"), "retire needs a 'when': the file is removed when it turns false")
    routes = raw.get("notify_routes")
    if isinstance(routes, str):
        routes = [routes]
    return TemplateSpec(
        src=raw["src"],
        dest=raw["dest"],
        mode=mode,
        owner=str(raw.get("owner", "root")),
        group=str(raw.get("group", "root")),
        validate=raw.get("validate"),
        notify=tuple(_str_list(doc, (*path, "notify"), notify)),
        when=raw.get("when"),
        retire=retire,
        notify_routes=None if routes is None else tuple(_str_list(doc, (*path, "notify_routes"), routes)),
        line=doc.line(path) or 0,
    )


class RoleLibrary:
    """Finds role files (the user's roles/ beside the inventory first, then the packaged ones)."""

    def __init__(self, inventory_dir: Path | None) -> None:
        self.dirs = search_dirs("roles", inventory_dir)
        self._cache: dict[str, Role] = {}

    def available(self) -> list[str]:
        names: set[str] = set()
        for d in self.dirs:
            # A role's name lands in opensips.cfg (a comment, the startup log line): only plain names count.
            names.update(p.stem for p in d.glob("*.yaml") if _ROLE_NAME.fullmatch(p.stem))
        return sorted(names)

    def find(self, name: str) -> Path | None:
        for d in self.dirs:
            candidate = d / f"{name}.yaml"
            # Anything by that name is the user's role, even a directory or a dangling link: loading it
            # then names what is wrong instead of silently falling back to the packaged role.
            if os.path.lexists(candidate):
                return candidate
        return None

    def load(self, name: str) -> Role:
        if name not in self._cache:
            path = self.find(name)
            if path is None:
                raise KeyError(name)
            self._cache[name] = parse_role(name, load_located(path, _display(path)))
        return self._cache[name]

    def expand(self, names: list[str]) -> list[Role]:
        """The base role, then each named role after the roles it requires, each once."""
        out: list[Role] = []
        seen: set[str] = set()

        def visit(n: str, chain: tuple[str, ...]) -> None:
            if n in seen:
                return
            if n in chain:
                raise InputError(f"roles require each other in a cycle: {' -> '.join((*chain, n))}")
            role = self.load(n)
            for req in role.requires:
                if self.find(req) is None:
                    raise InputError(f"requires unknown role '{req}'", file=role.file, field="requires")
                visit(req, (*chain, n))
            seen.add(n)
            out.append(role)

        for n in [BASE_ROLE, *names]:
            visit(n, ())
        return out

    def all_var_specs(self) -> dict[str, tuple[Role, FieldSpec]]:
        specs: dict[str, tuple[Role, FieldSpec]] = {}
        for n in self.available():
            role = self.load(n)
            for vname, spec in role.vars.items():
                specs.setdefault(vname, (role, spec))
        return specs


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
