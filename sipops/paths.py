"""Where the packaged roles/ and templates/ live (inside the wheel, or at the top of a source tree)."""

from __future__ import annotations

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
