"""Run the agent on a host: one command per phase, request and payload on its stdin, JSON back.

SSHRunner sits on a connection from sipops.remote.transport (strict host keys) and talks to a raw
paramiko channel: binary stdin at full speed (Invoke's stdin pump decodes text and sleeps between
reads). Root is reached with `sudo -n` when the SSH user is not root. LocalRunner is `--local`.
"""

from __future__ import annotations

import ast
import marshal
import os
import select
import subprocess
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sipops.remote import ship

AGENT = "sipops.host.agent:main"  # the push agent: facts, apply, wait, backups, place


class RemoteError(Exception):
    """The host could not be reached or the agent gave no answer (the reason is the message)."""


@dataclass
class Output:
    rc: int
    stdout: bytes
    stderr: bytes


# Called with each piece of the command's stdout as it arrives (live progress of a long command).
OnOutput = Callable[[bytes], None]


class Runner(Protocol):
    name: str

    def exec(self, command: str, stdin: bytes, timeout: float, on_output: OnOutput | None = None) -> Output: ...
    def close(self) -> None: ...


# Per runner, the bundles its host did not have: later calls send them at once (a host that cannot
# cache, e.g. a test run as a user, asks every time).
_missing: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def call(
    runner: Runner,
    request: dict[str, Any],
    payload: bytes = b"",
    timeout: float = 120,
    entry: str = AGENT,
) -> dict[str, Any]:
    """Run one job on the host: `entry(request, stdin, len(payload))` from its bundle (sipops.remote.ship);
    its decoded reply. Raises RemoteError when there is none.

    The bundle goes only when the host lacks it in its code cache (it says so, before running anything):
    a host that has it gets the hash alone.
    """
    req = marshal.dumps(request, 4)  # readable by any python3 since 3.4
    digest = ship.bundle(entry).digest
    missing = _missing.get(runner, set())
    out = runner.exec(ship_command(), ship.stdin(entry, req, payload, with_code=digest in missing), timeout)
    if out.rc == 0 and out.stdout.strip() == ship.NEED_CODE.encode():
        _missing.setdefault(runner, set()).add(digest)
        out = runner.exec(ship_command(), ship.stdin(entry, req, payload, with_code=True), timeout)
    for line in out.stdout.decode(errors="replace").splitlines():
        if line.startswith(ship.MARK):
            try:
                reply = ast.literal_eval(line[len(ship.MARK) :])
            except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
                raise RemoteError(f"unreadable answer from the host ({type(exc).__name__})") from exc
            if not isinstance(reply, dict):
                break
            return reply
    err = (out.stderr or out.stdout).decode(errors="replace").strip()
    if out.rc == 127 or "python3: not found" in err or ("No such file" in err and "python3" in err):
        raise RemoteError("python3 is not installed on the host (sipops runs its checks with it)")
    raise RemoteError(f"{entry} failed (exit {out.rc}): {err.splitlines()[-1] if err else 'no output'}")


def ship_command() -> str:
    return f"python3 -S -c {_sq(ship.BOOT)}"


def _sq(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


class LocalRunner:
    """This machine, without SSH (`--local`); root needed for files owned by others."""

    def __init__(self, name: str = "localhost") -> None:
        self.name = name

    def exec(self, command: str, stdin: bytes, timeout: float, on_output: OnOutput | None = None) -> Output:
        if on_output is None:
            proc = subprocess.run(["sh", "-c", command], input=stdin, capture_output=True, timeout=timeout, check=False)
            return Output(proc.returncode, proc.stdout, proc.stderr)
        return _stream_local(command, stdin, timeout, on_output)

    def close(self) -> None:
        pass


def sudo_prefix(user: str) -> str:
    """`sudo -n ` unless the SSH user is root: never a password prompt, a clear failure instead."""
    return "" if user == "root" else "sudo -n "


class SSHRunner:
    """One host over one transport.Client connection (strict host keys), kept open for every phase."""

    def __init__(self, host: Any, *, accept_new_host_key: bool = False) -> None:
        from sipops.remote.transport import Client

        self.name = str(host.name)
        self.host = host
        self.prefix = sudo_prefix(host.ssh.user)
        self.conn = Client(host, accept_new_host_key=accept_new_host_key)

    def exec(self, command: str, stdin: bytes, timeout: float, on_output: OnOutput | None = None) -> Output:
        try:
            self.conn.open()
            assert self.conn.client is not None
            transport = self.conn.client.get_transport()
            assert transport is not None
            chan = transport.open_session(timeout=float(self.host.ssh.connect_timeout))
            chan.exec_command(self.prefix + command)
            chan.sendall(stdin)
            chan.shutdown_write()
            return _drain(chan, timeout, on_output)
        except (OSError, EOFError) as exc:
            raise RemoteError(f"connection lost: {exc or type(exc).__name__}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("paramiko"):
                raise RemoteError(f"{type(exc).__name__}: {exc}") from exc
            raise

    def close(self) -> None:
        self.conn.close()


def _drain(chan: Any, timeout: float, on_output: OnOutput | None = None) -> Output:
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    while True:
        if chan.recv_ready():
            chunk = chan.recv(1 << 16)
            out += chunk
            if on_output is not None:
                on_output(chunk)
            continue
        if chan.recv_stderr_ready():
            err += chan.recv_stderr(1 << 16)
            continue
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            rc = chan.recv_exit_status()
            # late data after the exit status
            while chan.recv_ready():
                chunk = chan.recv(1 << 16)
                out += chunk
                if on_output is not None:
                    on_output(chunk)
            chan.close()
            return Output(rc, bytes(out), bytes(err))
        if chan.closed and not chan.exit_status_ready():
            raise RemoteError("connection lost (channel closed without an exit status)")
        if time.monotonic() > deadline:
            chan.close()
            raise RemoteError(f"no answer within {timeout:.0f}s")
        select.select([chan], [], [], 0.05)


def _stream_local(command: str, stdin: bytes, timeout: float, on_output: OnOutput) -> Output:
    """LocalRunner.exec with stdout handed on as it comes (stdin fed and stderr read by threads)."""
    proc = subprocess.Popen(
        ["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    err: list[bytes] = []

    def feed(pipe: Any) -> None:
        try:
            pipe.write(stdin)
        except BrokenPipeError:
            pass
        finally:
            pipe.close()

    threads = [
        threading.Thread(target=feed, args=(proc.stdin,), daemon=True),
        threading.Thread(target=lambda pipe=proc.stderr: err.append(pipe.read()), daemon=True),
    ]
    for t in threads:
        t.start()
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, expire)
    timer.start()
    out = bytearray()
    try:
        while chunk := os.read(proc.stdout.fileno(), 1 << 16):
            out += chunk
            on_output(chunk)
        rc = proc.wait()
    finally:
        timer.cancel()
    for t in threads:
        t.join()
    proc.stdout.close()
    proc.stderr.close()
    if expired.is_set():  # as subprocess.run(timeout=) says it
        raise subprocess.TimeoutExpired(command, timeout)
    return Output(rc, bytes(out), b"".join(err))


def local_root_path(root: Path | None, path: str) -> str:
    """Where a host path lives under a test root (`--root`), for messages and tests."""
    return os.fspath(root) + path if root else path
