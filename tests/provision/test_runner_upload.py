"""Uploads of install steps (a release tarball): sent whole, and not again when the host has the same file."""

from __future__ import annotations

from pathlib import Path

from sipops.provision.runner import ShellRunner
from sipops.remote.runner import LocalRunner, OnOutput, Output


class Recording(LocalRunner):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[int] = []

    def exec(self, command: str, stdin: bytes, timeout: float, on_output: OnOutput | None = None) -> Output:
        if stdin:
            self.sent.append(len(stdin))
        return super().exec(command, stdin, timeout, on_output)


def test_a_file_the_host_has_already_is_not_sent_again_and_a_changed_one_is(tmp_path: Path) -> None:
    local, remote = tmp_path / "opensips-3.6.8.tar.gz", tmp_path / "host" / "src" / "opensips-3.6.8.tar.gz"
    local.write_bytes(b"x" * 1000)
    runner = Recording()
    shell = ShellRunner(runner)
    shell.put(str(local), str(remote))
    shell.put(str(local), str(remote))
    assert remote.read_bytes() == local.read_bytes() and runner.sent == [1000]
    local.write_bytes(b"y" * 10)
    shell.put(str(local), str(remote))
    assert remote.read_bytes() == b"y" * 10 and runner.sent == [1000, 10]
