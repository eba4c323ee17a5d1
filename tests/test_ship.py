"""The one boot path for code on hosts (sipops.remote.ship, sipops.remote.runner.call): bundles are the
closure of an entry's imports inside sipops.host; the compiled bundle is cached on the host by hash in a
root-only directory, so a host that has it gets the hash alone; a cache file anyone but root could have
written is never run (the boot runs as root)."""

from __future__ import annotations

import ast
import hashlib
import marshal
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sipops
from sipops.remote import runner, ship
from sipops.remote.runner import LocalRunner, OnOutput, Output, RemoteError, call

STDLIB = set(sys.stdlib_module_names)
ENTRIES = [
    "sipops.host.agent:main",
    "sipops.host.tuneprobe:main",
    "sipops.host.drain:main",
    "sipops.host.health.main:remote_entry",
    "sipops.host.monitor.report:main",
    "sipops.host.users:main",
    "sipops.host.crowdsec_creds:main",
    "sipops.host.sip:probe_main",
]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the code cache is root's /var/cache/sipops")


def test_a_bundle_is_its_entrys_import_closure() -> None:
    assert ship.closure("sipops.host.agent") == ("sipops", "sipops.host", "sipops.host.agent", "sipops.host.sip")
    assert {"sipops.host.agent", "sipops.host.sip"} < set(ship.closure("sipops.host.tuneprobe"))
    assert "sipops.host.health.mi" in ship.closure("sipops.host.drain")
    health = set(ship.closure("sipops.host.health.main"))
    assert {"sipops.host.health.checks_mi", "sipops.host.monitor.sockdiag", "sipops.host.safefile"} < health
    assert "sipops.host.agent" not in health


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_bundle_imports_only_the_standard_library_and_itself(entry: str) -> None:
    modules = set(ship.bundle(entry).modules)
    module, _, function = entry.partition(":")
    for name in modules:
        # Module-level imports only: optional ones inside functions are guarded (psutil).
        for node in ast.parse(ship.module_file(name)[0].read_text()).body:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            else:
                continue
            for target in targets:
                ok = target.split(".")[0] in STDLIB or target == "__future__" or target in modules
                assert ok, f"{name} imports {target}, which a bare host does not have"
    assert callable(getattr(__import__(module, fromlist=["_"]), function))


def test_one_boot_path_no_other_module_ships_code() -> None:
    """No string surgery on sources, no second loader: grep finds them only in ship.py."""
    pkg = Path(sipops.__file__).parent
    for path in pkg.rglob("*.py"):
        if path == pkg / "remote" / "ship.py":
            continue
        text = path.read_text()
        for marker in ("inspect.getsource", "meta_path", "exec(compile", "MetaPathFinder", "SIPOPS-RESULT"):
            assert marker not in text, f"{path.relative_to(pkg)} has {marker}"


PROGRAM = """
import sys
def main(req, stream, size):
    return {"ok": True, "echo": req["x"], "payload": stream.read(size).decode()}
"""


class Recording(LocalRunner):
    """LocalRunner that keeps the size of the bundle each run was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[int] = []

    def exec(self, command: str, stdin: bytes, timeout: float, on_output: OnOutput | None = None) -> Output:
        self.sent.append(int(stdin.split(b" ", 1)[0]))
        return super().exec(command, stdin, timeout, on_output)


def _own_bundle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str = PROGRAM) -> Path:
    """A bundle of one module of its own (a cache file of its own); its cache path."""
    blob = marshal.dumps({"sipops_shiptest": (False, f"{text}\n# {tmp_path}\n")}, 4)
    b = ship.Bundle(("sipops_shiptest",), blob, hashlib.sha256(blob).hexdigest()[:32])
    monkeypatch.setattr(ship, "bundle", lambda entry: b)
    return Path(ship.CODE_CACHE) / f"code-{b.digest}-{sys.implementation.cache_tag}"


@root_only
def test_the_request_and_payload_round_trip_and_a_cached_bundle_goes_as_its_hash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = _own_bundle(monkeypatch, tmp_path)
    path.unlink(missing_ok=True)
    r = Recording()
    try:
        reply = call(r, {"x": ["é", 1, None, 2.5]}, b"payload", entry="sipops_shiptest:main")
        assert reply == {"ok": True, "echo": ["é", 1, None, 2.5], "payload": "payload"}
        assert r.sent[0] == 0 and r.sent[1] > 0  # asked with the hash alone; the host had to have the code
        st = path.stat()
        assert st.st_uid == 0 and st.st_mode & 0o777 == 0o644
        fresh = Recording()  # another run (as a second push): the hash alone
        assert call(fresh, {"x": 2}, entry="sipops_shiptest:main")["echo"] == 2
        assert fresh.sent == [0]
    finally:
        path.unlink(missing_ok=True)


@root_only
def test_a_cache_file_others_could_write_is_ignored_and_a_broken_one_replaced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = _own_bundle(monkeypatch, tmp_path)
    evil = compile('def main(r, s, n):\n    return {"pwned": True}\n', "x", "exec")
    Path(ship.CODE_CACHE).mkdir(mode=0o700, exist_ok=True)
    try:
        path.write_bytes(marshal.dumps({"sipops_shiptest": (False, evil)}))
        path.chmod(0o666)  # world-writable: not trusted
        assert call(LocalRunner(), {"x": 1}, entry="sipops_shiptest:main")["echo"] == 1
        path.unlink()
        path.write_bytes(b"not marshal data")
        path.chmod(0o644)
        assert call(LocalRunner(), {"x": 3}, entry="sipops_shiptest:main")["echo"] == 3
        code = marshal.loads(path.read_bytes())["sipops_shiptest"][1]  # recompiled and rewritten
        assert code.co_filename == "<sipops>/sipops_shiptest.py"
    finally:
        path.unlink(missing_ok=True)


def test_an_unreadable_answer_is_a_remote_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = 'import sys\ndef main(r, s, n):\n    sys.stdout.write("SIPOPS-RESULT {broken\\n")\n'
    path = _own_bundle(monkeypatch, tmp_path, text)
    try:
        with pytest.raises(RemoteError, match="unreadable answer"):
            call(LocalRunner(), {"op": "t"}, entry="sipops_shiptest:main")
    finally:
        path.unlink(missing_ok=True)


def test_the_boot_runs_the_real_agent_isolated_from_this_checkout(tmp_path: Path) -> None:
    """-I and another cwd: the sipops package cannot be imported; the bundle is all the host has."""
    req = marshal.dumps({"op": "backups", "root": str(tmp_path)}, 4)
    stdin = ship.stdin("sipops.host.agent:main", req, b"", with_code=True)
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", ship.BOOT], input=stdin, capture_output=True,
                          timeout=60, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.decode().strip().splitlines()[-1]
    assert line.startswith(ship.MARK) and ast.literal_eval(line[len(ship.MARK) :]) == {"ok": True, "backups": []}


def test_the_argv_form_runs_a_step_of_a_shell_script(tmp_path: Path) -> None:
    """install's verify step: the bundle in argv (the script is on stdin), the entry's return is the exit."""
    argv = ship.argv_command("sipops.host.sip:probe_main", ["udp:127.0.0.1:9"])
    proc = subprocess.run([sys.executable, "-I", *argv[1:]], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1 and "127.0.0.1:9" in proc.stdout, proc


def test_a_host_that_cannot_cache_gets_the_bundle_at_once_after_asking_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "_missing", runner.weakref.WeakKeyDictionary())
    r = Recording()

    def exec_no_cache(command: str, stdin: bytes, timeout: float, on_output: Any = None) -> Output:
        r.sent.append(int(stdin.split(b" ", 1)[0]))
        if r.sent[-1] == 0:
            return Output(0, ship.NEED_CODE.encode() + b"\n", b"")
        return Output(0, b"SIPOPS-RESULT {'ok': True}\n", b"")

    monkeypatch.setattr(r, "exec", exec_no_cache)
    assert call(r, {"op": "facts"}) == {"ok": True}
    assert call(r, {"op": "facts"}) == {"ok": True}
    assert r.sent[0] == 0 and r.sent[1] > 0 and r.sent[2] > 0 and len(r.sent) == 3
