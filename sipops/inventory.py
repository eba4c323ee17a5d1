"""The inventory: hosts, groups and defaults, validated, with each host's merged variables.

Precedence (lowest first): role defaults < inventory defaults < group vars (in file order) < host vars
< tuned/<host>.yaml beside the inventory (written by `sipops tune-tcp`: the limits computed from the
inventory's max_connections and the host's facts; and by `sipops cron install|remove`: the health
schedule it set up; delete a line or the file to drop them).
Variables are replaced whole at each level (a list or mapping is not merged).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipops.errors import InputError
from sipops.netcheck import check_wide
from sipops.roles import Role, RoleLibrary
from sipops.types import BadValue, FieldSpec, check_bool, check_host, check_int, check_port, check_str, suggest
from sipops.yamlpos import Located, dotted, load_located

DEFAULT_INVENTORY = "inventory.yaml"

_TOP_KEYS = ["defaults", "groups", "hosts"]
_DEFAULTS_KEYS = ["ssh", "vars"]
_GROUP_KEYS = ["members", "roles", "vars", "ssh"]
_HOST_KEYS = ["address", "ssh", "roles", "vars"]
# Host and group names: directory and file names (render -o DIR/<host>, tuned/<host>.yaml) and words in
# rendered files (comments, the OpenSIPS startup log line).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_SSH_KEYS = ["user", "port", "key", "known_hosts", "jump", "connect_timeout", "agent"]


@dataclass(frozen=True)
class SshSpec:
    user: str = "root"
    port: int = 22
    key: Path | None = None
    known_hosts: Path | None = None
    jump: str | None = None
    connect_timeout: int = 10
    agent: bool | None = None  # the SSH agent ($SSH_AUTH_SOCK); unset: used when no key is given


@dataclass(frozen=True)
class Origin:
    """Where a variable's value came from, for `sipops inventory show`."""

    level: str  # "role registrar", "defaults", "group edge", "host sip1"
    file: str
    line: int
    path: tuple[str | int, ...] = ()  # of the value in `file` (inventory layers), for lines of list entries

    def __str__(self) -> str:
        return f"{self.level} ({self.file}:{self.line})"


@dataclass
class Host:
    name: str
    address: str
    ssh: SshSpec
    roles: list[str]
    role_objs: list[Role]
    groups: list[str]
    vars: dict[str, Any]
    origins: dict[str, Origin]
    line: int


@dataclass
class Group:
    name: str
    members: list[str]
    roles: list[str]
    vars: dict[str, Any]
    line: int
    ssh: Any = None  # raw ssh mapping, applied over the defaults for members


@dataclass
class Inventory:
    file: str
    dir: Path
    hosts: dict[str, Host]
    groups: dict[str, Group]
    library: RoleLibrary
    doc: Located = field(repr=False)

    def select(self, patterns: list[str]) -> list[Host]:
        """Hosts named by host names, group names or `all`, in inventory order, each once."""
        if not patterns:
            raise InputError("name at least one host, group or 'all'", field="HOST")
        wanted: set[str] = set()
        for pat in patterns:
            if pat == "all":
                wanted.update(self.hosts)
            elif pat in self.hosts:
                wanted.add(pat)
            elif pat in self.groups:
                wanted.update(self.groups[pat].members)
            else:
                hint = suggest(pat, [*self.hosts, *self.groups, "all"])
                raise InputError(f"no host or group named '{pat}' in the inventory{hint}", file=self.file, field="HOST")
        return [h for name, h in self.hosts.items() if name in wanted]


def resolve_inventory_path(option: str | None) -> Path:
    """-i/--inventory, else $SIPOPS_INVENTORY, else ./inventory.yaml."""
    return Path(option or os.environ.get("SIPOPS_INVENTORY") or DEFAULT_INVENTORY)


class _Checker:
    def __init__(self, doc: Located) -> None:
        self.doc = doc

    def fail(self, path: tuple[str | int, ...], message: str) -> InputError:
        return InputError(message, file=self.doc.file, line=self.doc.line(path), field=dotted(path))

    def mapping(self, path: tuple[str | int, ...], value: Any, keys: list[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping with keys {', '.join(keys)}")
        for key in value:
            if key not in keys:
                hint = suggest(key, keys) or f"; expected one of {', '.join(keys)}"
                raise self.fail((*path, key), f"unknown key '{key}'{hint}")
        return value

    def str_list(self, path: tuple[str | int, ...], value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(path, "expected a list of names")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail((*path, i), f"expected a name, got {item!r}")
        return list(value)

    def value(self, path: tuple[str | int, ...], fn: Any, value: Any) -> Any:
        try:
            return fn(value)
        except BadValue as exc:
            raise self.fail((*path, *exc.path), exc.message) from None


def _ssh(chk: _Checker, path: tuple[str | int, ...], raw: Any, base: SshSpec, inv_dir: Path) -> SshSpec:
    data = chk.mapping(path, raw, _SSH_KEYS)
    out = dict(base.__dict__)
    for key, value in data.items():
        p = (*path, key)
        if key == "user":
            out[key] = chk.value(p, _check_ssh_user, value)
        elif key == "port":
            out[key] = chk.value(p, check_port, value)
        elif key == "connect_timeout":
            out[key] = chk.value(p, check_int, value)
        elif key in ("key", "known_hosts"):
            text = chk.value(p, check_str, value)
            expanded = Path(text).expanduser()
            out[key] = expanded if expanded.is_absolute() else (inv_dir / expanded)
        elif key == "jump":
            out[key] = chk.value(p, _check_jump, value)
        elif key == "agent":
            out[key] = chk.value(p, check_bool, value)
    return SshSpec(**out)


def _check_ssh_user(value: Any) -> str:
    text = check_str(value)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?", text):
        raise BadValue(f"'{text[:60]}' is not a user name")
    return text


def _check_jump(value: Any) -> str:
    """`[user@]host[:port]` or an inventory host name, checked now rather than at the first connection."""
    text = check_str(value)
    m = re.fullmatch(r"(?:([^@]+)@)?(\[[0-9A-Fa-f:.]+\]|[^:\[\]@]+)(?::([0-9]{1,5}))?", text)
    if m is None:
        raise BadValue(f"'{text[:60]}' is not [user@]host[:port]")
    if m[1] is not None:
        _check_ssh_user(m[1])
    check_host(m[2])
    if m[3] is not None:
        check_port(m[3])
    return text


def load_inventory(path: Path) -> Inventory:
    """Load and validate an inventory; any problem raises one InputError naming file:line and field."""
    doc = load_located(path)
    inv_dir = path.resolve().parent
    chk = _Checker(doc)
    top = chk.mapping((), doc.data, _TOP_KEYS)
    if "hosts" not in top or not top["hosts"]:
        raise chk.fail(("hosts",) if "hosts" in top else (), "the inventory has no hosts")
    library = RoleLibrary(inv_dir)
    specs = library.all_var_specs()

    defaults = chk.mapping(("defaults",), top.get("defaults"), _DEFAULTS_KEYS)
    base_ssh = _ssh(chk, ("defaults", "ssh"), defaults.get("ssh"), SshSpec(), inv_dir)
    default_vars = _vars(chk, ("defaults", "vars"), defaults.get("vars"), specs)

    raw_hosts = chk.mapping(("hosts",), top["hosts"], list(top["hosts"]))
    for name in [*raw_hosts, *(top.get("groups") or {} if isinstance(top.get("groups"), dict) else {})]:
        section = "hosts" if name in raw_hosts else "groups"
        if not _NAME.fullmatch(name):
            raise chk.fail((section, name), f"'{name[:60]}' is not a valid name: letters, digits, '.', '_' and '-' "
                           "(it becomes a file name and appears in rendered files)")  # fmt: skip
    raw_groups = top.get("groups") or {}
    if not isinstance(raw_groups, dict):
        raise chk.fail(("groups",), "expected a mapping of group name to group")
    groups: dict[str, Group] = {}
    for gname, graw in raw_groups.items():
        gpath: tuple[str | int, ...] = ("groups", gname)
        if gname == "all":
            raise chk.fail(gpath, "'all' is reserved for every host; choose another group name")
        if gname in raw_hosts:
            raise chk.fail(gpath, f"'{gname}' is both a group and a host name")
        gmap = chk.mapping(gpath, graw, _GROUP_KEYS)
        members = chk.str_list((*gpath, "members"), gmap.get("members"))
        for i, m in enumerate(members):
            if m not in raw_hosts:
                raise chk.fail((*gpath, "members", i), f"no host named '{m}'{suggest(m, list(raw_hosts))}")
        roles = chk.str_list((*gpath, "roles"), gmap.get("roles"))
        _check_roles(chk, (*gpath, "roles"), roles, library)
        gvars = _vars(chk, (*gpath, "vars"), gmap.get("vars"), specs)
        groups[gname] = Group(gname, members, roles, gvars, doc.line(gpath) or 0, gmap.get("ssh"))

    hosts: dict[str, Host] = {}
    seen_addr: dict[tuple[str, int], str] = {}
    for hname, hraw in raw_hosts.items():
        hpath: tuple[str | int, ...] = ("hosts", hname)
        h = chk.mapping(hpath, hraw, _HOST_KEYS)
        if "address" not in h:
            raise chk.fail(hpath, "missing required field 'address'")
        address = chk.value((*hpath, "address"), check_host, h["address"])
        member_of = [g for g in groups.values() if hname in g.members]
        ssh = base_ssh
        for g in member_of:
            if g.ssh is not None:
                ssh = _ssh(chk, ("groups", g.name, "ssh"), g.ssh, ssh, inv_dir)
        ssh = _ssh(chk, (*hpath, "ssh"), h.get("ssh"), ssh, inv_dir)
        key = (address, ssh.port)
        if key in seen_addr:
            raise chk.fail((*hpath, "address"), f"address {address} port {ssh.port} is already host '{seen_addr[key]}'")
        seen_addr[key] = hname
        roles = chk.str_list((*hpath, "roles"), h.get("roles"))
        _check_roles(chk, (*hpath, "roles"), roles, library)
        for g in member_of:
            roles += [r for r in g.roles if r not in roles]
        role_objs = library.expand(roles)
        host_vars = _vars(chk, (*hpath, "vars"), h.get("vars"), specs)
        own = {v for r in role_objs for v in r.vars}
        for vname in host_vars:
            if vname not in own:
                owner = specs[vname][0].name
                raise chk.fail(
                    (*hpath, "vars", vname),
                    f"variable '{vname}' belongs to role {owner}, which host '{hname}' does not have",
                )
        merged, origins = _merge(doc, hname, role_objs, default_vars, member_of, host_vars)
        _apply_tuned(inv_dir, hname, specs, merged, origins)
        check_wide(merged, lambda var, i, o=origins: _entry_where(doc, o[var], var, i))
        for r in role_objs:
            for vname, spec in r.vars.items():
                if spec.required and merged.get(vname) is None:
                    raise chk.fail(
                        (*hpath, "vars"),
                        f"missing required variable '{vname}' (role {r.name}: {spec.doc or 'no default'})",
                    )
        hosts[hname] = Host(
            name=hname,
            address=address,
            ssh=ssh,
            roles=roles,
            role_objs=role_objs,
            groups=[g.name for g in member_of],
            vars=merged,
            origins=origins,
            line=doc.line(hpath) or 0,
        )
    return Inventory(doc.file, inv_dir, hosts, groups, library, doc)


TUNED_DIR = "tuned"


def tuned_path(inv_dir: Path, host: str) -> Path:
    return inv_dir / TUNED_DIR / f"{host}.yaml"


# Keys `sipops cron install|remove` keeps in tuned/<host>.yaml (the rest are tune-tcp's).
CRON_KEYS = ("health_cron", "health_timer", "health_command", "health_alert_cmd")
_OVERLAY_HEADER = (
    "# Written by sipops: tune-tcp's limits computed for this host, cron install's health schedule.\n"
    "# They sit above the inventory's own values, so `sipops push` keeps them; delete a line (or\n"
    "# the file) to return to the inventory's values.\n"
)


def save_overlay(inv_dir: Path, host: str, values: dict[str, Any]) -> Path:
    """Merge `values` into tuned/<host>.yaml; the keys other commands wrote there stay."""
    import yaml

    path = tuned_path(inv_dir, host)
    current: dict[str, Any] = {}
    if path.is_file():
        loaded = load_located(path, _display(path)).data
        current = dict(loaded) if isinstance(loaded, dict) else {}
    current.update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(_OVERLAY_HEADER + yaml.safe_dump(current, sort_keys=True, default_flow_style=False))
    tmp.replace(path)
    return path


def _apply_tuned(
    inv_dir: Path,
    hname: str,
    specs: dict[str, tuple[Role, FieldSpec]],
    merged: dict[str, Any],
    origins: dict[str, Origin],
) -> None:
    """The tune-tcp layer: validated like the inventory, on top of it."""
    path = tuned_path(inv_dir, hname)
    if not os.path.lexists(path):  # a directory or a broken link there is reported, not skipped
        return
    tdoc = load_located(path, _display(path))
    values = _vars(_Checker(tdoc), (), tdoc.data, specs)
    for vname, value in values.items():
        if vname in merged:
            merged[vname] = value
            level = "cron install" if vname in CRON_KEYS else "tune-tcp"
            origins[vname] = Origin(level, tdoc.file, tdoc.line((vname,)) or 0)


def _entry_where(doc: Located, origin: Origin, var: str, i: int) -> tuple[str, int, str]:
    """file, line and field of entry i of a list variable, for an error about that entry."""
    if origin.path and origin.file == doc.file:
        entry = (*origin.path, i)
        return doc.file, doc.line(entry) or origin.line, dotted(entry)
    return origin.file, origin.line, f"{var}[{i}]"


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _check_roles(chk: _Checker, path: tuple[str | int, ...], roles: list[str], library: RoleLibrary) -> None:
    available = library.available()
    for i, r in enumerate(roles):
        if r not in available:
            hint = suggest(r, available) or "; known roles: " + ", ".join(available)
            raise chk.fail((*path, i), f"unknown role '{r}'{hint}")


def _vars(
    chk: _Checker, path: tuple[str | int, ...], raw: Any, specs: dict[str, tuple[Role, FieldSpec]]
) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise chk.fail(path, "expected a mapping of variable name to value")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        p = (*path, name)
        if name not in specs:
            raise chk.fail(p, f"unknown variable '{name}'{suggest(name, list(specs))}")
        out[name] = chk.value(p, specs[name][1].type.check, value)
    return out


def _merge(
    doc: Located,
    hname: str,
    role_objs: list[Role],
    default_vars: dict[str, Any],
    member_of: list[Group],
    host_vars: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Origin]]:
    merged: dict[str, Any] = {}
    origins: dict[str, Origin] = {}
    for r in role_objs:
        for vname, spec in r.vars.items():
            if vname not in merged:
                merged[vname] = spec.default
                origins[vname] = Origin(f"role {r.name}", r.file, r.var_lines.get(vname, 0))
    own = set(merged)
    layers: list[tuple[str, tuple[str | int, ...], dict[str, Any]]] = [("defaults", ("defaults", "vars"), default_vars)]
    layers += [(f"group {g.name}", ("groups", g.name, "vars"), g.vars) for g in member_of]
    layers.append((f"host {hname}", ("hosts", hname, "vars"), host_vars))
    for level, path, values in layers:
        for vname, value in values.items():
            if vname not in own:
                continue
            merged[vname] = value
            origins[vname] = Origin(level, doc.file, doc.line((*path, vname)) or 0, (*path, vname))
    return merged, origins
