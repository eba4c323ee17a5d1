"""Put artifacts on a host through the push agent's `place` op: a wheelhouse, a release tarball.

Install's steps unpack or build from them; they are not managed files (no validation, backup or
handlers), but reach the host the one way files do: one agent run asks which differ by sha256 (so
unchanged megabytes are never sent), a second sends only those, checked and renamed into place whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipops.remote.facts import sha256
from sipops.remote.runner import RemoteError, Runner, call


@dataclass(frozen=True)
class Artifact:
    path: str  # absolute path on the host
    content: bytes
    mode: str = "0644"


def place(runner: Runner, artifacts: list[Artifact], *, root: str = "", timeout: float = 600) -> list[str]:
    """Put each artifact whose bytes the host does not have yet; the paths written (RemoteError on failure)."""
    if not artifacts:
        return []
    files = [{"path": a.path, "sha256": sha256(a.content), "size": len(a.content), "mode": a.mode} for a in artifacts]
    differ = set(call(runner, {"op": "place", "root": root, "files": files, "check": True}, timeout=60)["differ"])
    send = [(f, a) for f, a in zip(files, artifacts, strict=True) if f["path"] in differ]
    if not send:
        return []
    req = {"op": "place", "root": root, "files": [f for f, _ in send]}
    reply = call(runner, req, b"".join(a.content for _, a in send), timeout=timeout)
    if not reply.get("ok"):
        raise RemoteError(f"placing {', '.join(sorted(differ))} failed: {reply.get('error')}")
    return list(reply["placed"])
