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


def load_located(path: Path, display: str | None = None) -> Located:
    """Parse a YAML file; a syntax error becomes an InputError naming file and line."""
    from sipops.errors import InputError

    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file not found", file=name) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", file=name) from None
    return load_located_text(text, name)


def load_located_text(text: str, name: str) -> Located:
    from sipops.errors import InputError

    out = Located(file=name, data=None)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            out.data = None
            return out
        out.data = _construct(node, (), out, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise InputError(f"YAML syntax error: {problem}", file=name, line=line) from None
    except yaml.YAMLError as exc:
        raise InputError(f"YAML error: {exc}", file=name) from None
    finally:
        loader.dispose()
    return out
