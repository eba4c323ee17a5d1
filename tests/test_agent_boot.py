"""The agent's boot on a host: its compiled code cached by source hash, and a cache file anyone but
root could have written is never run (the agent runs as root)."""

from __future__ import annotations

import marshal
import os
import sys
from pathlib import Path

import pytest

from sipops.remote import runner
from sipops.remote.runner import LocalRunner, RemoteError, call

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the code cache is root's /var/cache/sipops")

PROGRAM = b"""
import sys
def main(req, stream, size):
    out = {"ok": True, "echo": req["x"], "payload": stream.read(size).decode()}
    sys.stdout.write("SIPOPS-RESULT " + ascii(out) + "\\n")
"""


def _cache(src: bytes) -> Path:
    return Path(runner.CODE_CACHE) / f"agent-{runner._digest(src)}-{sys.implementation.cache_tag}"


def test_the_request_and_payload_round_trip_and_the_code_is_cached(tmp_path: Path) -> None:
    src = PROGRAM + f"# {tmp_path}\n".encode()  # a source of its own: a cache file of its own
    path = _cache(src)
    path.unlink(missing_ok=True)
    try:
        reply = call(LocalRunner(), {"op": "t", "x": ["é", 1, None, 2.5]}, b"payload", source=src)
        assert reply == {"ok": True, "echo": ["é", 1, None, 2.5], "payload": "payload"}
        st = path.stat()
        assert st.st_uid == 0 and st.st_mode & 0o777 == 0o644
        assert call(LocalRunner(), {"op": "t", "x": 2}, source=src)["echo"] == 2  # from the cache
    finally:
        path.unlink(missing_ok=True)


def test_a_cache_file_others_could_write_is_ignored_and_a_broken_one_replaced(tmp_path: Path) -> None:
    src = PROGRAM + f"# {tmp_path}\n".encode()
    path = _cache(src)
    evil = compile('def main(r, s, n):\n    print("SIPOPS-RESULT " + ascii({"pwned": True}))\n', "x", "exec")
    Path(runner.CODE_CACHE).mkdir(mode=0o700, exist_ok=True)
    try:
        path.write_bytes(marshal.dumps(evil))
        path.chmod(0o666)  # world-writable: not trusted
        assert call(LocalRunner(), {"op": "t", "x": 1}, source=src)["echo"] == 1
        path.unlink()
        path.write_bytes(b"not marshal data")
        path.chmod(0o644)
        assert call(LocalRunner(), {"op": "t", "x": 3}, source=src)["echo"] == 3
        assert marshal.loads(path.read_bytes()).co_filename == "sipops-agent"  # recompiled and rewritten
    finally:
        path.unlink(missing_ok=True)


def test_an_unreadable_answer_is_a_remote_error() -> None:
    src = b'import sys\ndef main(r, s, n):\n    sys.stdout.write("SIPOPS-RESULT {broken\\n")\n'
    try:
        with pytest.raises(RemoteError, match="unreadable answer"):
            call(LocalRunner(), {"op": "t"}, source=src)
    finally:
        _cache(src).unlink(missing_ok=True)
