"""Render every managed file of a host from its roles' templates (Jinja2, StrictUndefined)."""

from __future__ import annotations

import hashlib
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from sipops.errors import InputError
from sipops.escape import FILTERS
from sipops.inventory import Host, Inventory
from sipops.netcheck import overlap_warnings
from sipops.opensips import OpenSIPSLayout, layout
from sipops.paths import cache_dir, search_dirs


@dataclass(frozen=True)
class RenderedFile:
    """One file as it must be on the host."""

    dest: str  # absolute path on the host
    content: bytes
    mode: str
    owner: str
    group: str
    validate: str | None  # command with `{path}` for the staged copy
    notify: tuple[str, ...]
    src: str  # template it came from (for messages)
    notify_routes: tuple[str, ...] | None = None  # opensips.cfg: instead of notify when only routes changed


@dataclass(frozen=True)
class RetiredFile:
    """A file the host must not have any more (its template's `when` is false): removed if present."""

    dest: str
    command: str  # run on the host before the removal ("" for none)
    notify: tuple[str, ...]  # after the removal: the template's daemon-reload, if it notifies one
    src: str


@dataclass(frozen=True)
class HostRender:
    host: Host
    files: list[RenderedFile]
    handlers: dict[str, str]  # name -> command, for the handlers any file may notify
    retired: list[RetiredFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # worth a look, not an error (overlapping allowlists)
    # The variables the templates saw (context()): install's phases, the push gate and health read them
    # here instead of building them again.
    context: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def layout(self) -> OpenSIPSLayout:
        return layout(self.host)


@cache
def _health_zipapp() -> bytes:
    from sipops.health.bundle import zipapp_bytes

    return zipapp_bytes()


# Files sipops builds instead of rendering (a role template's src names one): the same bytes for every
# host, pushed like any template's output (hash compared, backed up, swapped atomically, retired).
GENERATED: dict[str, Callable[[], bytes]] = {"sipops:health.pyz": _health_zipapp}

# Ten times the largest packaged template: Jinja compiles ~100 KiB of expressions a second, so the cap is
# what keeps a hostile template's compile (run before any error could be reported) well under a second.
TEMPLATE_MAX_BYTES = 64 * 1024


class _TemplateLoader(jinja2.FileSystemLoader):
    """FileSystemLoader that reads through sipops.host.safefile (size cap, UTF-8, regular files only) and
    takes anything by the name in the user's templates/ as theirs (a directory there is an error, not
    a silent fallback to the packaged template)."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Any]:
        from sipops.host.safefile import UnreadableFile, read_text

        pieces = jinja2.loaders.split_template_path(template)
        for base in self.searchpath:
            filename = os.path.join(base, *pieces)
            if os.path.lexists(filename):
                break
        else:
            raise jinja2.TemplateNotFound(template)
        try:
            contents = read_text(filename, TEMPLATE_MAX_BYTES)
        except (UnreadableFile, FileNotFoundError) as exc:
            message = exc.message if isinstance(exc, UnreadableFile) else "file not found"
            line = exc.line if isinstance(exc, UnreadableFile) else None
            raise InputError(f"template: {message}", file=_short(filename), line=line) from None
        mtime = os.path.getmtime(filename)

        def uptodate() -> bool:
            try:
                return os.path.getmtime(filename) == mtime
            except OSError:
                return False

        return contents, os.path.normpath(filename), uptodate


def environment(inv: Inventory) -> jinja2.Environment:
    dirs = [str(d) for d in search_dirs("templates", inv.dir)]
    env = jinja2.Environment(
        loader=_TemplateLoader(dirs),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        bytecode_cache=_bytecode_cache(),
    )
    env.filters.update(FILTERS)  # escaping per target: sipops.escape
    env.tests["ipv6"] = _is_ipv6
    env.tests["ipv4"] = _is_ipv4
    from sipops.host.monitor import nftsets  # the firewall's sets: declared once, for the ban backend too
    from sipops.host.monitor.rules import bursts

    env.globals["nft_sets"] = nftsets.ALL_SETS
    env.globals["nft_open_grace"] = nftsets.open_grace  # the restart handlers' grace window
    env.globals["syn_bursts"] = bursts  # the meters' bursts, as the watcher's rules count them
    return env


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    """Compiled templates kept between runs (keyed by the template's source hash, so edits are seen):
    compiling was a quarter of a no-op push's time."""
    base = cache_dir("jinja")
    return jinja2.FileSystemBytecodeCache(str(base)) if base is not None else None


def _is_ipv6(value: str) -> bool:
    """An IPv6 address or network (`2001:db8::/32`)."""
    return ":" in str(value)


def _is_ipv4(value: str) -> bool:
    return ":" not in str(value) and str(value)[:1].isdigit()


def context(inv: Inventory, host: Host, env: jinja2.Environment | None = None) -> dict[str, Any]:
    """Variables templates see: the host's merged vars plus facts derived from the inventory."""
    v = dict(host.vars)
    osl = layout(host)
    modules = _names(v, host, "modules")
    fleet = [{"name": h.name, "address": h.address, "roles": h.roles} for h in inv.hosts.values()]
    sockets = v.get("sockets") or [
        {
            "proto": proto,
            "address": v.get("sip_listen") or host.address,
            "port": v["sip_port"],
            "advertise": v.get("advertised_address"),
        }
        for proto in v["sip_protocols"]
    ]
    v.update(
        sip_sockets=sockets,
        inventory_hostname=host.name,
        host={
            "name": host.name,
            "address": host.address,
            "roles": host.roles,
            "groups": host.groups,
            "ssh_port": host.ssh.port,
        },
        roles=[r.name for r in host.role_objs],
        modules=modules,
        opensips_packages=_names(v, host, "opensips_packages"),
        opensips=osl.as_dict(),
        fleet=fleet,
    )
    from sipops import mediarelay  # relay sets and the relay's own settings (checked: InputError)

    v.update(mediarelay.context(inv, host))
    from sipops import crowdsec_setup  # the fleet's CrowdSec LAPI (checked: InputError)

    v.update(crowdsec_setup.context(inv, host))
    env = env or environment(inv)
    ports = []
    for r in host.role_objs:
        for p in r.ports:
            port = _expr(env, p.port, v, f"{r.file} (ports)", host)
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                raise InputError(f"port '{port}' is not 1-65535 (host {host.name})", file=r.file, field="ports")
            ports.append({"proto": p.proto, "port": int(port), "from": p.source, "comment": p.comment, "role": r.name})
    v["firewall_ports"] = ports
    return v


_NAMES_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined)


def _from_string(env: jinja2.Environment, text: str) -> jinja2.Template:
    """env.from_string, compiled once per environment and text: recompiling each host's dest/when/owner
    expressions was most of the render time of a fleet (and so of a no-op push)."""
    cache: dict[str, jinja2.Template] = env.__dict__.setdefault("_sipops_expr_cache", {})
    tmpl = cache.get(text)
    if tmpl is None:
        tmpl = cache[text] = _compile_cached(env, text)
    return tmpl


def _compile_cached(env: jinja2.Environment, text: str) -> jinja2.Template:
    """env.from_string through the environment's bytecode cache, as file templates are: the roles'
    expressions were 40 compiles per process, a tenth of a no-op push's CPU."""
    bcc = env.bytecode_cache
    if bcc is None:
        return env.from_string(text)
    name = "expr-" + hashlib.sha256(text.encode()).hexdigest()
    bucket = bcc.get_bucket(env, name, None, text)
    if bucket.code is None:
        bucket.code = env.compile(text, name)
        bcc.set_bucket(bucket)
    return env.template_class.from_code(env, bucket.code, env.make_globals(None), None)


def _names(v: dict[str, Any], host: Host, key: str) -> list[str]:
    """A role list (modules, opensips_packages) whose entries may be Jinja expressions yielding 0..n names."""
    env = _NAMES_ENV
    out: list[str] = []
    for r in host.role_objs:
        for entry in getattr(r, key):
            try:
                text = _from_string(env, entry).render(v) if "{" in entry else entry
            except (jinja2.TemplateError, TypeError, ValueError, KeyError, RecursionError) as exc:
                raise InputError(f"{key} entry {entry!r}: {exc} (host {host.name})", file=r.file, field=key) from None
            out += [n for n in text.replace(",", " ").split() if n not in out]
    return out


def _template_error(exc: Exception, host: Host, fallback: str) -> InputError:
    """Map a Jinja error to file:line of the template and the variable involved."""
    file, line = fallback, None
    if isinstance(exc, jinja2.TemplateSyntaxError):
        file, line = exc.filename or exc.name or fallback, exc.lineno
        return InputError(f"template syntax error: {exc.message} (host {host.name})", file=_short(file), line=line)
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.endswith(".j2") or "/templates/" in frame.filename:
            file, line = frame.filename, frame.lineno
    msg = str(exc)
    field = None
    if isinstance(exc, jinja2.UndefinedError):
        name = msg.split("'")[1] if msg.count("'") >= 2 else None
        field = name
        msg = f"undefined variable: {msg} (host {host.name})"
    else:
        msg = f"template error: {type(exc).__name__}: {msg} (host {host.name})"
    return InputError(msg, file=_short(file), line=line, field=field)


def _short(path: str) -> str:
    try:
        return str(Path(os.path.abspath(path)).relative_to(Path.cwd()))
    except ValueError:
        return path


def _expr(env: jinja2.Environment, text: str, ctx: dict[str, Any], where: str, host: Host) -> str:
    try:
        return _from_string(env, text).render(ctx)
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, RecursionError) as exc:
        raise _template_error(exc, host, where) from None


def render_host(inv: Inventory, host: Host, env: jinja2.Environment | None = None) -> HostRender:
    env = env or environment(inv)
    ctx = context(inv, host, env)
    handlers: dict[str, str] = {}
    for r in host.role_objs:
        for name, cmd in r.handlers.items():
            handlers[name] = _expr(env, cmd, ctx, f"{r.file} (handlers.{name})", host)
    files: dict[str, RenderedFile] = {}
    retired: dict[str, RetiredFile] = {}
    for r in host.role_objs:
        for t in r.templates:
            where = f"{r.file}:{t.line}"
            if t.when is not None:
                cond = _expr(env, "{{ (" + t.when + ") | string }}", ctx, where, host)
                if cond != "True":
                    if t.retire is not None:
                        dest = _expr(env, t.dest, ctx, where, host)
                        command = _expr(env, t.retire, ctx, where, host) if t.retire else ""
                        reload = tuple(n for n in t.notify if "daemon-reload" in handlers.get(n, ""))
                        retired[dest] = RetiredFile(dest, command, reload, t.src)
                    continue
            dest = _expr(env, t.dest, ctx, where, host)
            if not dest.startswith("/"):
                raise InputError(f"dest '{dest}' is not an absolute path", file=r.file, line=t.line, field="dest")
            for field_name, names in (("notify", t.notify), ("notify_routes", t.notify_routes or ())):
                for n in names:
                    if n not in handlers:
                        message = f"notifies unknown handler '{n}'"
                        raise InputError(message, file=r.file, line=t.line, field=field_name)
            try:
                built = GENERATED.get(t.src)
                text = built() if built is not None else env.get_template(t.src).render(ctx)
            except jinja2.TemplateNotFound as exc:
                raise InputError(f"template '{exc.name}' not found", file=r.file, line=t.line, field="src") from None
            except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
                raise _template_error(exc, host, t.src) from None
            validate = _expr(env, t.validate, ctx, where, host) if t.validate else None
            # A later role may replace an earlier role's file (e.g. a user's role overriding one path).
            owner = _expr(env, t.owner, ctx, where, host)
            group = _expr(env, t.group, ctx, where, host)
            content = text if isinstance(text, bytes) else text.encode()
            files[dest] = RenderedFile(dest, content, t.mode, owner, group, validate, t.notify, t.src, t.notify_routes)
    gone = [retired[d] for d in sorted(retired) if d not in files]  # another template may still render it
    warnings = overlap_warnings(host.name, host.vars)
    return HostRender(host, [files[d] for d in sorted(files)], handlers, gone, warnings, ctx)


def write_tree(out_dir: Path, rendered: HostRender) -> list[Path]:
    """Write DIR/<host>/<absolute path> for each file; returns the paths written."""
    written = []
    for f in rendered.files:
        target = out_dir / rendered.host.name / f.dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".sipops-tmp")
        tmp.write_bytes(f.content)
        tmp.replace(target)
        written.append(target)
    return written
