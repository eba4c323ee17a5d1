"""Run the agent on a host: one command per phase, request and payload on its stdin, JSON back.

SSHRunner sits on a connection from sipops.remote.transport (strict host keys) and talks to a raw
paramiko channel: binary stdin at full speed (Invoke's stdin pump decodes text and sleeps between
reads). Root is reached with `sudo -n` when the SSH user is not root. LocalRunner is `--local`.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import marshal
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import sipops.host.sip
from sipops.host import agent

MARK = "SIPOPS-RESULT "
CODE_CACHE = "/var/cache/sipops"
# Reads the program's source (or its compiled code, cached on the host by the source's hash and the
# Python's cache tag, in a root-only directory), then hands it the request (marshal: no json import
# on the host) and the rest of stdin (the payload).
BOOT = f"""import sys,os,marshal,types
b=sys.stdin.buffer;h=b.readline().split();n=[int(x) for x in h[:3]];s=b.read(n[0])
d='{CODE_CACHE}';p=d+'/agent-'+h[3].decode()+'-'+sys.implementation.cache_tag
try:
 st=os.stat(p)
 if st.st_uid!=os.geteuid() or st.st_mode&0o22:raise OSError
 c=marshal.loads(open(p,'rb').read())
except Exception:
 c=compile(s,'sipops-agent','exec')
 try:
  os.makedirs(d,0o700,exist_ok=True);t='%s.%d'%(p,os.getpid());open(t,'wb').write(marshal.dumps(c));os.rename(t,p)
 except Exception:pass
m=types.ModuleType('sipops_agent');sys.modules['sipops_agent']=m;exec(c,m.__dict__)
m.main(marshal.loads(b.read(n[1])),b,n[2])"""


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


@cache
def agent_source(with_sip: bool = True) -> bytes:
    """sip.py (the OPTIONS probe, for the health gate) followed by the agent; one `from __future__` on top."""
    sip = inspect.getsource(sipops.host.sip) if with_sip else "from __future__ import annotations\n"
    body = inspect.getsource(agent).replace("from __future__ import annotations\n", "")
    body = body.replace("    from sipops.host.sip import options_ping\n", "    pass\n")
    return (sip + "\n" + body).encode()


def call(
    runner: Runner,
    request: dict[str, Any],
    payload: bytes = b"",
    timeout: float = 120,
    source: bytes | None = None,
) -> dict[str, Any]:
    """Run one agent op on the host; the decoded reply. Raises RemoteError when there is none.

    source: another program to run the same way (it defines main(request, stream, size)).
    """
    src = agent_source(request["op"] == "apply") if source is None else source
    req = marshal.dumps(request, 4)  # readable by any python3 since 3.4
    stdin = f"{len(src)} {len(req)} {len(payload)} {_digest(src)}\n".encode() + src + req + payload
    out = runner.exec(f"python3 -S -c {_sq(BOOT)}", stdin, timeout)
    for line in out.stdout.decode(errors="replace").splitlines():
        if line.startswith(MARK):
            try:
                reply = ast.literal_eval(line[len(MARK) :])
            except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
                raise RemoteError(f"unreadable answer from the agent ({type(exc).__name__})") from exc
            if not isinstance(reply, dict):
                break
            return reply
    err = (out.stderr or out.stdout).decode(errors="replace").strip()
    if out.rc == 127 or "python3: not found" in err or ("No such file" in err and "python3" in err):
        raise RemoteError("python3 is not installed on the host (sipops runs its checks with it)")
    raise RemoteError(f"agent failed (exit {out.rc}): {err.splitlines()[-1] if err else 'no output'}")


@cache
def _digest(src: bytes) -> str:
    return hashlib.sha256(src).hexdigest()[:32]


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
