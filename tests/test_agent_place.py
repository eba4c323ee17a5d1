"""The push agent's place op (install's wheelhouse and release tarball): sent whole, checked, renamed into
place, and not sent again when the host has the same bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sipops.remote.place import Artifact, place
from sipops.remote.runner import LocalRunner, OnOutput, Output, call

TARBALL = "/usr/local/src/opensips-3.6.8.tar.gz"


class Recording(LocalRunner):
    """This machine, keeping what each agent run was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def exec(self, command: str, stdin: bytes, timeout: float, on_output: OnOutput | None = None) -> Output:
        self.sent.append(stdin)
        return super().exec(command, stdin, timeout, on_output)


def test_a_file_the_host_has_already_is_not_sent_again_and_a_changed_one_is(tmp_path: Path) -> None:
    runner, live = Recording(), tmp_path / TARBALL.lstrip("/")
    assert place(runner, [Artifact(TARBALL, b"x" * 100_000)], root=str(tmp_path)) == [TARBALL]
    assert live.read_bytes() == b"x" * 100_000 and live.stat().st_mode & 0o777 == 0o644
    assert len(runner.sent) == 2 and b"x" * 100_000 in runner.sent[1]  # the agent's check, then the bytes
    assert place(runner, [Artifact(TARBALL, b"x" * 100_000)], root=str(tmp_path)) == []
    assert len(runner.sent) == 3 and b"x" * 100_000 not in runner.sent[2]  # only the check went
    assert place(runner, [Artifact(TARBALL, b"y" * 10)], root=str(tmp_path)) == [TARBALL]
    assert live.read_bytes() == b"y" * 10
    assert sorted(p.name for p in live.parent.iterdir()) == [live.name]  # no temporary file left


def test_a_transfer_cut_short_changes_nothing(tmp_path: Path) -> None:
    live = tmp_path / TARBALL.lstrip("/")
    place(LocalRunner(), [Artifact(TARBALL, b"old")], root=str(tmp_path))
    data = b"new bytes of the release"
    f = {"path": TARBALL, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "mode": "0644"}
    reply = call(LocalRunner(), {"op": "place", "root": str(tmp_path), "files": [f]}, data[:5], timeout=60)
    assert not reply["ok"] and "cut short" in reply["error"]
    assert live.read_bytes() == b"old" and sorted(p.name for p in live.parent.iterdir()) == [live.name]


def test_bytes_that_do_not_match_their_checksum_are_refused(tmp_path: Path) -> None:
    f = {"path": TARBALL, "sha256": hashlib.sha256(b"expected").hexdigest(), "size": 8, "mode": "0644"}
    reply = call(LocalRunner(), {"op": "place", "root": str(tmp_path), "files": [f]}, b"tampered", timeout=60)
    assert not reply["ok"] and not (tmp_path / TARBALL.lstrip("/")).exists()
