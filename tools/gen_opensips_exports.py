#!/usr/bin/env python3
"""Generate sipops/data/opensips_exports.json: every module's script functions and modparams.

Reads OpenSIPS sources checked out outside the repository (one full source tree per release,
e.g. the 3.4.18 and 3.6.8 tags); nothing of OpenSIPS is copied into sipops and nothing is built.
For each tree it parses the cmd_export_t / acmd_export_t arrays (script functions, async ones
included) and the param_export_t arrays (modparams) of modules/*/*.c and net/proto_*/*.c:

* a function's max args is the number of all its parameters ({0,0,0} ends the list), its min args
  the number up to its last parameter without CMD_PARAM_OPT (an optional parameter before a
  mandatory one is passed empty: f("a", , $var(x))), as sipops' hand-written table counts them;
  a function whose route flags are 0 is an API binding (load_tm), not callable from the script,
  and is left out;
* comments are dropped and both branches of every #if/#ifdef are taken;
* a name given by a macro is resolved through simple `#define X "str"` lines of the module's own
  files and the headers they include, and an entry that is a macro standing for entries
  (lib/reg's reg_modparams) is expanded the same way; an entry the generator cannot read (a macro
  it cannot expand) is skipped, counted and printed;
* an export found in one release only carries that release ("3.4" or "3.6").

Core functions (core_cmds.c) stay in the hand-written sipops/opensips_exports.py. The generated
functions and params of the modules that table covers are cross-checked against it, and every
disagreement is printed.

Usage: python3 tools/gen_opensips_exports.py --src34 /opt/src/opensips-3.4 --src36 /opt/src/opensips-3.6
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "sipops" / "data" / "opensips_exports.json"
RELEASES = ("3.4", "3.6")

_COMMENT_OR_STRING = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|/\*.*?\*/|//[^\n]*', re.S)
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+(.+?)[ \t]*$", re.M)
_ARRAY = re.compile(r"\b(cmd_export_t|acmd_export_t|param_export_t)\s+(\w+)\s*\[\s*\w*\s*\]\s*=\s*\{")
_STRING = re.compile(r'"((?:\\.|[^"\\])*)"')
_IDENT = re.compile(r"^[A-Za-z_]\w*$")
_STRING_PART = re.compile(r'"((?:\\.|[^"\\])*)"|([A-Za-z_]\w*)|\s+|.')
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"', re.M)

FuncArgs = tuple[int, int]


@dataclass
class Skipped:
    release: str
    where: str
    what: str
    why: str


@dataclass
class ModuleScan:
    functions: dict[str, FuncArgs] = field(default_factory=dict)
    params: set[str] = field(default_factory=set)


@dataclass
class ReleaseScan:
    modules: dict[str, ModuleScan] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    api_only: int = 0  # functions with route flags 0 (API bindings), left out


def strip_comments(text: str) -> str:
    """The C text without comments (each replaced by a space or its newlines); strings are kept."""

    def repl(m: re.Match[str]) -> str:
        s = m.group()
        if s.startswith(("/*", "//")):
            return "\n" * s.count("\n") or " "
        return s

    return _COMMENT_OR_STRING.sub(repl, text)


def join_continuations(text: str) -> str:
    return text.replace("\\\r\n", " ").replace("\\\n", " ")


def drop_preprocessor(text: str) -> str:
    """Every preprocessor line blanked: both branches of #if/#ifdef/#else are kept."""
    return "\n".join("" if line.lstrip().startswith("#") else line for line in text.split("\n"))


def string_defines(text: str) -> dict[str, str]:
    """`#define NAME "str"` (and `#define NAME OTHER`, resolved later) of one file."""
    return {m.group(1): m.group(2) for m in _DEFINE.finditer(text)}


def resolve_string(expr: str, defines: dict[str, str], depth: int = 0) -> str | None:
    """The value of a C string expression: literals and macros naming literals, side by side."""
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        expr = expr[1:-1].strip()
    if not expr or depth > 10:
        return None
    out = []
    for m in _STRING_PART.finditer(expr):
        if m.group(1) is not None:
            out.append(m.group(1))
        elif m.group(2) is not None and m.group(2) in defines:
            value = resolve_string(defines[m.group(2)], defines, depth + 1)
            if value is None:
                return None
            out.append(value)
        elif not m.group().isspace():
            return None
    return "".join(out)


def matching_brace(text: str, open_idx: int) -> int:
    """Index of the brace closing text[open_idx] ('{'), strings skipped; -1 if none."""
    depth, i = 0, open_idx
    while i < len(text):
        c = text[i]
        if c == '"' or c == "'":
            i = _string_end(text, i)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _string_end(text: str, i: int) -> int:
    quote, i = text[i], i + 1
    while i < len(text) and text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    return i + 1


def split_top(text: str) -> list[str]:
    """Comma-separated items of text, commas inside (), {}, [] or strings ignored; stripped, empties dropped."""
    items: list[str] = []
    depth, start, i = 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == '"' or c == "'":
            i = _string_end(text, i)
            continue
        if c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
        i += 1
    items.append(text[start:].strip())
    return [s for s in items if s]


def _braced(item: str) -> str | None:
    item = item.strip()
    if item.startswith("{") and item.endswith("}"):
        return item[1:-1]
    return None


def _is_zero(expr: str) -> bool:
    return expr.strip() in ("0", "NULL", "(char*)0", "(char *)0", "(void*)0", "(void *)0")


def parse_cmd_params(block: str) -> FuncArgs | str:
    """(min, max) of a `{{CMD_PARAM_STR, f, g}, ..., {0,0,0}}` block, or why it cannot be read."""
    inner = _braced(block)
    if inner is None:
        return f"parameter list is not a brace list: {block[:40]}"
    lo = hi = 0
    for p in split_top(inner):  # min: up to the last mandatory one (optional ones before it are passed empty)
        fields = _braced(p)
        if fields is None:
            return f"parameter is not a brace list: {p[:40]}"
        parts = split_top(fields)
        if not parts or _is_zero(parts[0]):
            break  # {0,0,0} terminator
        hi += 1
        if "CMD_PARAM_OPT" not in parts[0]:
            lo = hi
    return lo, hi


def scan_file(path: Path, module: str, defines: dict[str, str], scan: ReleaseScan, release: str, root: Path) -> None:
    text = drop_preprocessor(strip_comments(join_continuations(path.read_text(errors="replace"))))
    where = str(path.relative_to(root))
    mod = scan.modules.setdefault(module, ModuleScan())
    for m in _ARRAY.finditer(text):
        kind = m.group(1)
        open_idx = m.end() - 1
        close = matching_brace(text, open_idx)
        if close < 0:
            scan.skipped.append(Skipped(release, where, m.group(2), "array never closes"))
            continue
        entries = split_top(text[open_idx + 1 : close])
        _scan_entries(entries, kind, mod, defines, scan, release, where, 0)


def _scan_entries(
    entries: list[str],
    kind: str,
    mod: ModuleScan,
    defines: dict[str, str],
    scan: ReleaseScan,
    release: str,
    where: str,
    depth: int,
) -> None:
    for entry in entries:
        body = _braced(entry)
        if body is None:
            value = defines.get(entry.strip())
            if value is not None and value.lstrip().startswith("{") and depth < 5:
                # a macro standing for entries (lib/reg's reg_modparams, pn_modparams, pn_async_cmds)
                _scan_entries(split_top(value), kind, mod, defines, scan, release, where, depth + 1)
            else:
                scan.skipped.append(Skipped(release, where, entry[:60], f"{kind} entry is a macro it cannot expand"))
            continue
        fields = split_top(body)
        if not fields or _is_zero(fields[0]):
            continue  # array terminator
        name = resolve_string(fields[0], defines)
        if name is None:
            scan.skipped.append(Skipped(release, where, fields[0], f"{kind} name is an unresolved macro"))
            continue
        if kind == "param_export_t":
            mod.params.add(name)
            continue
        if len(fields) < 3:
            scan.skipped.append(Skipped(release, where, name, f"{kind} entry has {len(fields)} fields"))
            continue
        if kind == "cmd_export_t" and len(fields) >= 4 and _is_zero(fields[3]):
            scan.api_only += 1
            continue
        args = parse_cmd_params(fields[2])
        if isinstance(args, str):
            scan.skipped.append(Skipped(release, where, name, args))
            continue
        old = mod.functions.get(name)
        if old is not None and old != args:  # sync and async forms, or both #ifdef branches
            args = (min(old[0], args[0]), max(old[1], args[1]))
        mod.functions[name] = args


def module_dirs(src: Path) -> list[tuple[str, Path]]:
    dirs = [d for d in sorted((src / "modules").iterdir()) if d.is_dir()]
    dirs += [d for d in sorted((src / "net").glob("proto_*")) if d.is_dir()]
    return [(d.name, d) for d in dirs if any(d.glob("*.c"))]


def header_defines(path: Path, root: Path, seen: set[Path], depth: int = 0) -> dict[str, str]:
    """The #defines of the headers path includes with "...", recursively, inside the source tree."""
    out: dict[str, str] = {}
    if depth > 4:
        return out
    text = join_continuations(path.read_text(errors="replace"))
    for inc in _INCLUDE.findall(text):
        hdr = (path.parent / inc).resolve()
        if hdr in seen or not hdr.is_file() or not hdr.is_relative_to(root):
            continue
        seen.add(hdr)
        for k, v in string_defines(strip_comments(join_continuations(hdr.read_text(errors="replace")))).items():
            out.setdefault(k, v)
        for k, v in header_defines(hdr, root, seen, depth + 1).items():
            out.setdefault(k, v)
    return out


def scan_release(src: Path, release: str) -> ReleaseScan:
    scan = ReleaseScan()
    root = src.resolve()
    for module, d in module_dirs(src):
        files = sorted(d.glob("*.c"))
        texts = {f: join_continuations(f.read_text(errors="replace")) for f in [*files, *sorted(d.glob("*.h"))]}
        shared: dict[str, str] = {}  # the module's own files first, then what they include
        for t in texts.values():
            for k, v in string_defines(strip_comments(t)).items():
                shared.setdefault(k, v)
        seen: set[Path] = {f.resolve() for f in texts}
        for f in texts:
            for k, v in header_defines(f, root, seen).items():
                shared.setdefault(k, v)
        for f in files:
            defines = {**shared, **string_defines(strip_comments(texts[f]))}
            scan_file(f, module, defines, scan, release, src)
        found = scan.modules[module]
        if not found.functions and not found.params and not any("module_exports" in t for t in texts.values()):
            del scan.modules[module]  # no exports at all: not a module (a module without cmds/params still is)
    return scan


def merge(scans: dict[str, ReleaseScan]) -> dict[str, dict[str, dict[str, list[int | str] | str]]]:
    a, b = RELEASES
    out: dict[str, dict[str, dict[str, list[int | str] | str]]] = {}
    names = sorted(set(scans[a].modules) | set(scans[b].modules))
    for name in names:
        ma = scans[a].modules.get(name, ModuleScan())
        mb = scans[b].modules.get(name, ModuleScan())
        functions: dict[str, list[int | str] | str] = {}
        for fn in sorted(set(ma.functions) | set(mb.functions)):
            fa, fb = ma.functions.get(fn), mb.functions.get(fn)
            if fa is not None and fb is not None:
                functions[fn] = [min(fa[0], fb[0]), max(fa[1], fb[1])]
            elif fa is not None:
                functions[fn] = [fa[0], fa[1], a]
            elif fb is not None:
                functions[fn] = [fb[0], fb[1], b]
        params: dict[str, list[int | str] | str] = {}
        for p in sorted(ma.params | mb.params):
            params[p] = "" if p in ma.params and p in mb.params else (a if p in ma.params else b)
        out[name] = {"functions": functions, "params": params}
    return out


def args_differ(scans: dict[str, ReleaseScan]) -> list[str]:
    """Functions whose argument counts differ between the releases (the table keeps the widest)."""
    a, b = RELEASES
    lines = []
    for name, ma in sorted(scans[a].modules.items()):
        mb = scans[b].modules.get(name)
        if mb is None:
            continue
        for fn, fa in sorted(ma.functions.items()):
            fb = mb.functions.get(fn)
            if fb is not None and fb != fa:
                lines.append(f"  {name}.{fn}: {a} {list(fa)}, {b} {list(fb)}")
    return lines


def write_json(path: Path, generated_from: dict[str, str], modules: dict[str, object]) -> None:
    lines = ["{", f'"generated_from": {json.dumps(generated_from, sort_keys=True)},', '"modules": {']
    items = sorted(modules.items())
    for i, (name, mod) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        lines.append(f"{json.dumps(name)}: {json.dumps(mod, sort_keys=True)}{comma}")
    lines += ["}", "}", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def cross_check(modules: dict[str, dict[str, dict[str, list[int | str] | str]]]) -> list[str]:
    """Every disagreement between the generated table and the hand-written one, for its modules."""
    sys.path.insert(0, str(REPO))
    from sipops.opensips_exports import MODULES

    out: list[str] = []
    for name, hand in sorted(MODULES.items()):
        gen = modules.get(name)
        if gen is None:
            out.append(f"{name}: module not found in the sources")
            continue
        gen_f = {k: tuple(v) for k, v in gen["functions"].items() if isinstance(v, list)}
        for fn in sorted(set(hand.functions) | set(gen_f)):
            h, g = hand.functions.get(fn), gen_f.get(fn)
            if h != g:
                out.append(f"{name}: function {fn}: hand {h}, sources {g}")
        gen_p = {k: v for k, v in gen["params"].items() if isinstance(v, str)}
        for p in sorted(set(hand.params) | set(gen_p)):
            hp, gp = hand.params.get(p), gen_p.get(p)
            if hp != gp:
                out.append(f"{name}: param {p}: hand {hp!r}, sources {gp!r}")
    return out


def tag(src: Path, fallback: str) -> str:
    """The release of a source tree, from its Makefile.defs (VERSION_MAJOR/MINOR/SUBMINOR)."""
    defs = src / "Makefile.defs"
    if not defs.exists():
        return fallback
    text = defs.read_text(errors="replace")
    parts = []
    for var in ("VERSION_MAJOR", "VERSION_MINOR", "VERSION_SUBMINOR"):
        m = re.search(rf"^{var}\s*=\s*(\S+)", text, re.M)
        if m is None:
            return fallback
        parts.append(m.group(1))
    return ".".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--src34", type=Path, required=True, help="OpenSIPS 3.4 source tree")
    ap.add_argument("--src36", type=Path, required=True, help="OpenSIPS 3.6 source tree")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    srcs = {"3.4": args.src34, "3.6": args.src36}
    scans: dict[str, ReleaseScan] = {}
    for release, src in srcs.items():
        if not (src / "modules").is_dir():
            print(f"{src}: not an OpenSIPS source tree (no modules/)", file=sys.stderr)
            return 2
        scans[release] = scan_release(src, release)
    modules = merge(scans)
    generated_from = {r: tag(s, r) for r, s in srcs.items()}
    write_json(args.out, generated_from, dict(modules))

    for release, scan in scans.items():
        n_f = sum(len(m.functions) for m in scan.modules.values())
        n_p = sum(len(m.params) for m in scan.modules.values())
        print(
            f"{release} ({generated_from[release]}): {len(scan.modules)} modules, {n_f} functions, {n_p} params; "
            f"{scan.api_only} API-only functions left out; {len(scan.skipped)} entries skipped"
        )
        for s in scan.skipped:
            print(f"  skipped {s.where}: {s.what} ({s.why})")
    differ = args_differ(scans)
    print(f"{len(differ)} functions whose argument counts differ between releases (widest kept):")
    print("\n".join(differ))
    disagreements = cross_check(modules)
    print(f"cross-check against sipops/opensips_exports.py: {len(disagreements)} disagreements")
    for d in disagreements:
        print(f"  {d}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
