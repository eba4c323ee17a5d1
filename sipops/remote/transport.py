"""SSH connections to inventory hosts, with strict host-key checking and no hidden key sources.

connect() gives a Fabric Connection (commands that run shell commands: cron, service, lab checks).
Client is the push engine's: the same paramiko SSHClient, settings and host-key rules without
Fabric's Connection around it, whose import (invoke and its parser) alone cost 0.1 s of CPU in
every `sipops push`; the agent talks to a raw channel anyway (sipops.remote.runner).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol


def _import_paramiko_without_invoke() -> None:
    """paramiko.config imports invoke (0.04 s) for `Match exec` in ssh_config files, which sipops never
    reads (an empty SSHConfig, always): paramiko is loaded with invoke hidden, then invoke is
    importable again for Fabric's commands."""
    if "paramiko" in sys.modules or "invoke" in sys.modules:
        return
    sys.modules["invoke"] = None  # type: ignore[assignment]
    try:
        import paramiko  # noqa: F401
    finally:
        del sys.modules["invoke"]


_import_paramiko_without_invoke()
import paramiko  # noqa: E402

if TYPE_CHECKING:
    import fabric

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")


class SSHSettingsLike(Protocol):
    """The `ssh` part of an inventory host (sipops.inventory.SSHSettings)."""

    @property
    def user(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def key(self) -> Path | None: ...
    @property
    def known_hosts(self) -> Path | None: ...
    @property
    def jump(self) -> str | None: ...
    @property
    def connect_timeout(self) -> int: ...
    @property
    def agent(self) -> bool | None: ...


class HostLike(Protocol):
    """What `connect` needs from an inventory host (sipops.inventory.Host)."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def ssh(self) -> SSHSettingsLike: ...


class HostKeyError(Exception):
    """The host's SSH key is not in known_hosts, or differs from the one recorded there."""

    def __init__(self, host: str, address: str, known_hosts: Path, *, changed: bool) -> None:
        if changed:
            what = f"host key of {host} ({address}) differs from the one in {known_hosts}"
            hint = "if the host was rebuilt on purpose, remove its old line from that file"
        else:
            what = f"host key of {host} ({address}) is not in {known_hosts}"
            hint = "add it to that file (ssh-keyscan, then check it) or connect once with accept-new"
        super().__init__(f"{what}: refusing to connect; {hint}")
        self.host = host
        self.address = address
        self.known_hosts = known_hosts
        self.changed = changed


@dataclass(frozen=True)
class JumpHost:
    """A jump host given as `[user@]host[:port]`, using the same key and known_hosts as the target."""

    name: str
    address: str
    ssh: SSHSettingsLike


@dataclass(frozen=True)
class _JumpSSH:
    user: str
    port: int
    key: Path | None
    known_hosts: Path | None
    connect_timeout: int
    jump: str | None = None
    agent: bool | None = None


_JUMP = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:\s]+)(?::(?P<port>\d+))?$")


def parse_jump(spec: str, via: HostLike) -> JumpHost:
    """Turn `[user@]host[:port]` into a host that shares `via`'s key and known_hosts."""
    match = _JUMP.match(spec.strip())
    if match is None:
        raise ValueError(f"ssh.jump of {via.name}: expected [user@]host[:port], got {spec!r}")
    address = match["host"].strip("[]")
    settings = _JumpSSH(
        user=match["user"] or via.ssh.user,
        port=int(match["port"]) if match["port"] else 22,
        key=via.ssh.key,
        known_hosts=via.ssh.known_hosts,
        connect_timeout=via.ssh.connect_timeout,
        agent=via.ssh.agent,
    )
    return JumpHost(name=spec, address=address, ssh=settings)


def known_hosts_path(host: HostLike) -> Path:
    """The one file host keys are read from: ssh.known_hosts, else ~/.ssh/known_hosts."""
    path = host.ssh.known_hosts if host.ssh.known_hosts is not None else DEFAULT_KNOWN_HOSTS
    return path.expanduser()


_APPEND_LOCK = threading.Lock()


class _AcceptNewPolicy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc,unused-ignore]
    """Like OpenSSH's StrictHostKeyChecking=accept-new: record unknown keys; changed keys still fail."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        with _APPEND_LOCK:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            with os.fdopen(fd, "a") as out:
                out.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class _StrictClient(paramiko.SSHClient):  # type: ignore[misc,unused-ignore]
    """An SSHClient that turns paramiko's host-key failures into HostKeyError."""

    def __init__(self, host: HostLike, known_hosts: Path) -> None:
        super().__init__()
        self._sipops_host = host
        self._sipops_known_hosts = known_hosts

    def connect(self, *args: Any, **kwargs: Any) -> None:
        host, path = self._sipops_host, self._sipops_known_hosts
        try:
            super().connect(*args, **kwargs)
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(host.name, host.address, path, changed=True) from exc
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(host.name, host.address, path, changed=False) from exc
            raise


def _transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """paramiko's Transport on a socket with Nagle off (as OpenSSH does).

    Every agent run is a few small packets (channel open, exec, stdin, EOF) that wait for the
    previous one's ACK with Nagle on; with the peer's delayed ACK that is 40 ms per command.
    """
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return paramiko.Transport(sock, **kwargs)


def auth_kwargs(ssh: SSHSettingsLike) -> dict[str, Any]:
    """How paramiko authenticates: the inventory's key (ssh.key) and/or the SSH agent ($SSH_AUTH_SOCK).

    ssh.agent unset: the agent only when no key is given (a named key is used alone, like
    IdentitiesOnly). Never ~/.ssh/id_* behind the inventory's back.
    """
    use_agent = ssh.agent if ssh.agent is not None else ssh.key is None
    kwargs: dict[str, Any] = {"allow_agent": use_agent, "look_for_keys": False, "transport_factory": _transport}
    if ssh.key is not None:
        kwargs["key_filename"] = [str(ssh.key.expanduser())]
    return kwargs


def _client(host: HostLike, accept_new_host_key: bool) -> paramiko.SSHClient:
    path = known_hosts_path(host)
    client = _StrictClient(host, path)
    # Only this file: never ~/.ssh/known_hosts behind the inventory's back, never system files.
    if path.is_file():
        client.load_host_keys(str(path))
    if accept_new_host_key:
        client.set_missing_host_key_policy(_AcceptNewPolicy(path))
    else:
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def connect(
    host: HostLike,
    *,
    accept_new_host_key: bool = False,
    connect_timeout: int | None = None,
    jump_host: HostLike | None = None,
) -> fabric.Connection:
    """A Fabric connection to `host` (opened lazily) that refuses unknown or changed host keys.

    connect_timeout: seconds; None uses the host's ssh.connect_timeout.
    jump_host: the resolved ssh.jump host, when it names another inventory host; otherwise
    ssh.jump is read as `[user@]host[:port]`.
    """
    import fabric

    timeout = connect_timeout if connect_timeout is not None else host.ssh.connect_timeout
    gateway: fabric.Connection | None = None
    if host.ssh.jump:
        via: HostLike = jump_host if jump_host is not None else parse_jump(host.ssh.jump, host)
        gateway = connect(via, accept_new_host_key=accept_new_host_key, connect_timeout=timeout)
    connect_kwargs = auth_kwargs(host.ssh)
    # An explicit empty SSHConfig keeps ~/.ssh/config from changing where or how we connect;
    # remote commands never read our stdin (sipops runs unattended, often under cron or pytest).
    config = fabric.Config(ssh_config=paramiko.SSHConfig(), overrides={"run": {"in_stream": False}})
    conn = fabric.Connection(
        host.address,
        user=host.ssh.user,
        port=host.ssh.port,
        config=config,
        gateway=gateway,
        connect_timeout=timeout,
        connect_kwargs=connect_kwargs,
    )
    conn.client = _client(host, accept_new_host_key)
    return conn


class Client:
    """One host's SSH connection for the push engine, opened on first use (open() is idempotent).

    The same rules as connect(): only the inventory's known_hosts, RejectPolicy unless
    accept_new_host_key, only the inventory's key and/or the SSH agent (auth_kwargs; no ~/.ssh keys, no ~/.ssh/config),
    ssh.jump through a direct-tcpip channel of the jump host's own strict connection.
    """

    def __init__(
        self,
        host: HostLike,
        *,
        accept_new_host_key: bool = False,
        connect_timeout: int | None = None,
        jump_host: HostLike | None = None,
    ) -> None:
        self.host = host
        self.accept_new_host_key = accept_new_host_key
        self.timeout = connect_timeout if connect_timeout is not None else host.ssh.connect_timeout
        self.jump_host = jump_host
        self.client: paramiko.SSHClient | None = None
        self._gateway: Client | None = None

    @property
    def is_connected(self) -> bool:
        transport = self.client.get_transport() if self.client is not None else None
        return transport is not None and transport.is_active()

    def open(self) -> None:
        if self.is_connected:
            return
        self.close()
        host = self.host
        sock: Any = None
        if host.ssh.jump:
            via = self.jump_host if self.jump_host is not None else parse_jump(host.ssh.jump, host)
            self._gateway = Client(via, accept_new_host_key=self.accept_new_host_key, connect_timeout=self.timeout)
            self._gateway.open()
            assert self._gateway.client is not None
            gw = self._gateway.client.get_transport()
            assert gw is not None
            sock = gw.open_channel("direct-tcpip", (host.address, host.ssh.port), ("", 0), timeout=self.timeout)
        kwargs = auth_kwargs(host.ssh)
        if "key_filename" not in kwargs and not (kwargs["allow_agent"] and os.environ.get("SSH_AUTH_SOCK")):
            why = "ssh.agent is false" if kwargs["allow_agent"] is False else "$SSH_AUTH_SOCK is not set"
            raise paramiko.AuthenticationException(
                f"no SSH key for {host.name}: set ssh.key in the inventory, or load the key into an SSH agent ({why})"
            )
        client = _client(host, self.accept_new_host_key)
        try:
            client.connect(
                host.address, port=host.ssh.port, username=host.ssh.user, timeout=self.timeout, sock=sock, **kwargs
            )
        except BaseException:
            client.close()
            self.close()
            raise
        self.client = client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._gateway is not None:
            self._gateway.close()
            self._gateway = None
