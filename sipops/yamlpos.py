"""YAML loading that remembers the line of every key and value, for one-line error messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


@dataclass
class Located:
    """A YAML document as plain Python data plus the 1-based line of every path in it."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)

    def line(self, path: Path_) -> int | None:
        """Line of `path`, or of its nearest ancestor that has one."""
        p = tuple(path)
        while True:
            if p in self.lines:
                return self.lines[p]
            if not p:
                return None
            p = p[:-1]


# libyaml's parser when PyYAML has it (about 10x faster on the inventory and roles of every command).
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _construct(node: yaml.Node, path: Path_, out: Located, loader: yaml.SafeLoader) -> Any:
    out.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or isinstance(key, bool):
                raise _error(out.file, key_node, ".".join(map(str, path)) or "(top)", "keys must be plain strings")
            key = str(key)
            child = (*path, key)
            if key in result:
                raise _error(out.file, key_node, _dotted(child), f"duplicate key '{key}'")
            out.lines[child] = key_node.start_mark.line + 1
            result[key] = _construct(value_node, child, out, loader)
            out.lines[child] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), out, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def dotted(path: Path_) -> str:
    """`('hosts', 'sip1', 'roles', 0)` -> `hosts.sip1.roles[0]`."""
    return _dotted(path)


def _error(file: str, node: yaml.Node, fld: str, message: str) -> Exception:
    from sipops.errors import InputError

    return InputError(message, file=file, line=node.start_mark.line + 1, field=fld)


# What a YAML input may expand to (the rule for every YAML file sipops reads, with sipops.host.safefile's size
# cap): aliases and merge keys are allowed (`<<: *ssh_defaults`), but the document they expand to must
# stay within MAX_NODES nodes and MAX_DEPTH levels; an alias to its own ancestor is refused. The check
# runs on libyaml's node graph, where an alias is a shared node, so a "billion laughs" of a few hundred
# bytes is measured (memoised per node) without being expanded. libyaml itself stops at 1000 levels.
MAX_NODES = 100_000
MAX_DEPTH = 64


def load_located(path: Path, display: str | None = None) -> Located:
    """Parse a YAML file; any problem with it becomes an InputError naming file (and line)."""
    from sipops.errors import InputError
    from sipops.host.safefile import UnreadableFile, read_text

    name = display or str(path)
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise InputError("file not found", file=name) from None
    except UnreadableFile as exc:
        raise InputError(exc.message, file=name, line=exc.line) from None
    return load_located_text(text, name)


def _check_graph(root: yaml.Node, name: str) -> None:
    """Refuse a document whose expansion passes MAX_NODES or MAX_DEPTH, or that contains itself."""
    from sipops.errors import InputError

    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, depth below it)
    active: set[int] = set()

    def walk(node: yaml.Node, level: int) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise InputError("an alias refers to a node that contains it", file=name, line=node.start_mark.line + 1)
        if level > MAX_DEPTH:
            raise InputError(f"nested deeper than {MAX_DEPTH} levels", file=name, line=node.start_mark.line + 1)
        total, depth = 1, 0
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            active.add(key)
            children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
            for child in children:
                n, d = walk(child, level + 1)
                total += n
                depth = max(depth, d + 1)
                if total > MAX_NODES:
                    raise InputError(
                        f"expands to more than {MAX_NODES} YAML nodes (aliases?)",
                        file=name,
                        line=node.start_mark.line + 1,
                    )
            active.discard(key)
        sizes[key] = (total, depth)
        return total, depth

    walk(root, 0)


def _count_events(text: str, name: str) -> None:
    """Refuse a document of more than MAX_NODES items before composing it: libyaml's parser streams events
    at ~1 µs each, its composer builds nodes at ~4 µs each (a 1 MiB flat list took 2 s to compose)."""
    from sipops.errors import InputError

    counter = _Loader(text)
    try:
        count = 0
        while counter.check_event():
            event = counter.get_event()  # type: ignore[no-untyped-call]
            count += 1
            if count > MAX_NODES:
                line = event.start_mark.line + 1
                raise InputError(
                    f"more than {MAX_NODES} YAML nodes; sipops reads no file that large", file=name, line=line
                )
    finally:
        counter.dispose()


def load_located_text(text: str, name: str) -> Located:
    from sipops.errors import InputError

    out = Located(file=name, data=None)
    loader = _Loader(text)
    try:
        _count_events(text, name)
        node = loader.get_single_node()
        if node is None:
            out.data = None
            return out
        _check_graph(node, name)
        out.data = _construct(node, (), out, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise InputError(f"YAML syntax error: {problem}", file=name, line=line) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else None
        char = f" (character #x{exc.character:04x})" if isinstance(exc.character, int) else ""
        raise InputError(f"YAML error: {exc.reason}{char}", file=name, line=line) from None
    except yaml.YAMLError as exc:
        raise InputError(f"YAML error: {exc}", file=name) from None
    finally:
        loader.dispose()
    return out
