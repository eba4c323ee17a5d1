"""Where the packaged roles/ and templates/ live (inside the wheel, or at the top of a source tree)."""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def packaged(name: str) -> Path:
    """`roles` or `templates`: the copy inside the wheel, else the source tree's top-level folder."""
    inside = _PKG / name
    if inside.is_dir():
        return inside
    return _PKG.parent / name


def search_dirs(name: str, inventory_dir: Path | None) -> list[Path]:
    """A user's folder beside the inventory first (overrides file by file), then the packaged one."""
    dirs: list[Path] = []
    if inventory_dir is not None and (inventory_dir / name).is_dir():
        dirs.append(inventory_dir / name)
    pkg = packaged(name)
    if pkg not in dirs:
        dirs.append(pkg)
    return dirs


def cache_dir(name: str) -> Path | None:
    """~/.cache/sipops/<name> ($XDG_CACHE_HOME honoured), created; None when it cannot be written."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sipops" / name
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return base if os.access(base, os.W_OK) else None
