"""`sipops diff`: a plan as unified diffs, secrets masked on both sides, coloured on request."""

from __future__ import annotations

import difflib

from sipops.remote.plan import CREATE, REMOVE, UNCHANGED, FileChange, HostPlan
from sipops.secrets import mask_text

RED, GREEN, CYAN, BOLD, YELLOW, RESET = "\033[31m", "\033[32m", "\033[36m", "\033[1m", "\033[33m", "\033[0m"


def _text(data: bytes | None) -> str | None:
    if data is None:
        return ""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def file_diff(change: FileChange, host: str) -> list[str]:
    """Unified diff lines (no colour) of one changed file; passwords masked on both sides."""
    if not change.content:
        return []
    before_raw = None if change.action == CREATE else (change.before.content if change.before else None)
    if change.action != CREATE and before_raw is None:
        return ["(the host's content was not fetched)"]
    before, after = _text(before_raw), _text(change.file.content)
    if before is None or after is None:
        return ["Binary content differs"]
    # Diffed raw, masked line by line: a changed password shows as a changed (masked) line.
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    old = "/dev/null" if change.action == CREATE else f"{host}:{change.dest}"
    new = "/dev/null" if change.action == REMOVE else f"new:{change.dest}"
    lines = [mask_text(line.rstrip("\n")) for line in difflib.unified_diff(a, b, old, new, n=3)]
    return lines


def summary(plan: HostPlan) -> str:
    counts: dict[str, int] = {}
    for c in plan.files:
        counts[c.action] = counts.get(c.action, 0) + 1
    parts = [
        f"{counts[a]} to {a}" if a != UNCHANGED else f"{counts[a]} unchanged"
        for a in ("create", "change", REMOVE, UNCHANGED)
        if counts.get(a)
    ]
    text = ", ".join(parts) or "no files"
    if plan.handlers:
        text += "; handlers: " + ", ".join(plan.handlers)
    return text


def render_plan(plan: HostPlan, *, color: bool) -> list[str]:
    """The whole preview of one host."""

    def paint(code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if color else text

    out = [paint(BOLD, f"{plan.host}: {summary(plan)}")]
    for p in plan.problems:
        out.append(paint(RED, f"  cannot push: {p}"))
    for n in plan.notes:
        out.append(paint(YELLOW, f"  note: {n}"))
    for c in plan.changes:
        out.append(paint(BOLD, f"  {c.action} {c.dest} ({c.describe()})"))
        for line in file_diff(c, plan.host):
            if line.startswith(("+++", "---")):
                out.append(paint(BOLD, line))
            elif line.startswith("+"):
                out.append(paint(GREEN, line))
            elif line.startswith("-"):
                out.append(paint(RED, line))
            elif line.startswith("@@"):
                out.append(paint(CYAN, line))
            else:
                out.append(line)
    return out
