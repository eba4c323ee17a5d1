"""sipops/host runs on managed hosts with python3 and nothing else: it may import the standard library and
itself, nothing more. An optional extra (psutil, Debian's python3-nftables) is allowed only inside a
`try:` whose handler catches ImportError, so the module still works without it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

HOST = Path(__file__).resolve().parents[1] / "sipops" / "host"
MODULES = sorted(HOST.rglob("*.py"))


def _guarded(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside a try whose handlers catch ImportError."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
        if not caught & {"ImportError", "ModuleNotFoundError", "(ImportError, OSError)"}:
            continue
        for stmt in node.body:
            for sub in ast.walk(stmt):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    lines.add(sub.lineno)
    return lines


def _violations(path: Path, root: Path = HOST.parent) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    guarded = _guarded(tree)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                bad.append(f"{path.name}:{node.lineno}: relative import (use sipops.host.…)")
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if name == "sipops.host" or name.startswith("sipops.host."):
                continue
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if top != "sipops" and node.lineno in guarded:
                continue
            bad.append(f"{path.relative_to(root)}:{node.lineno}: imports {name}")
    return bad


def test_the_host_package_has_its_modules() -> None:
    assert len(MODULES) > 30, MODULES  # guards against the glob silently finding nothing


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(HOST)))
def test_host_modules_import_only_the_standard_library_and_sipops_host(path: Path) -> None:
    assert _violations(path) == []


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import yaml\nfrom sipops.inventory import Host\nfrom . import x\n"
        "try:\n    import psutil\nexcept ImportError:\n    psutil = None\n"
    )
    found = _violations(bad, root=tmp_path)
    assert [v.split(": ", 1)[1] for v in found] == [
        "imports yaml",
        "imports sipops.inventory",
        "relative import (use sipops.host.…)",
    ]
