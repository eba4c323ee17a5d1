"""Base root filesystem (debootstrap, cached) and each host's copy-on-write layer over it."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sipops.lab.proc import LabError, run, succeeds
from sipops.lab.state import LabState, Member

DEFAULT_CACHE = Path("/var/cache/sipops/lab")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd,systemd-sysv,dbus,openssh-server,openssh-sftp-server,iproute2,rsyslog,logrotate,"
    "cron,nftables,procps,python3"
)
MARKER = ".sipops-base.json"
CLIENT_KEY = Path("ssh") / "id_ed25519"
SSHD_DROP_IN = """\
# Written by sipops lab: one host key per host (generated on the machine), keys only.
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""


def cache_dir() -> Path:
    return Path(os.environ.get("SIPOPS_LAB_CACHE") or DEFAULT_CACHE)


def base_path(release: str) -> Path:
    return cache_dir() / f"{release}-base"


_DEB822_URI = re.compile(r"^\s*URIs:\s*(\S+)", re.M)
_ONE_LINE_URI = re.compile(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", re.M)


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses ($SIPOPS_LAB_MIRROR wins), else deb.debian.org."""
    if os.environ.get("SIPOPS_LAB_MIRROR"):
        return os.environ["SIPOPS_LAB_MIRROR"]
    texts: list[str] = []
    parts = sources / "sources.list.d"
    for path in [*sorted(parts.glob("*.sources")), *sorted(parts.glob("*.list")), sources / "sources.list"]:
        try:
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    for text in texts:
        uris: list[str] = _DEB822_URI.findall(text) + _ONE_LINE_URI.findall(text)
        for uri in uris:
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


@contextmanager
def _cache_lock() -> Iterator[None]:
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_in_use(base: Path) -> bool:
    """Whether some overlay mount uses `base` as its lower layer (rebuilding would break it)."""
    needle = f"lowerdir={base}"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        return any(needle in line for line in mounts)


def base_ready(base: Path) -> bool:
    return (base / MARKER).is_file()


def ensure_base(release: str, *, rebuild: bool, log: Path) -> tuple[Path, bool]:
    """The cached base for `release`, built first if missing (or if `rebuild`); returns (path, built)."""
    base = base_path(release)
    with _cache_lock():
        for stale in cache_dir().glob(f".build-{release}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # a crashed build: never half a cache
        if base_ready(base) and not rebuild:
            return base, False
        if rebuild and base.exists() and base_in_use(base):
            raise LabError(f"{base} is in use by a running lab; run `sipops lab down` before --rebuild")
        build = Path(tempfile.mkdtemp(prefix=f".build-{release}-", dir=cache_dir()))
        try:
            _debootstrap(release, build, log)
            _finish_base(build, release)
            if base.exists():
                old = Path(tempfile.mkdtemp(prefix=f".build-{release}-old-", dir=cache_dir()))
                base.rename(old / "base")
                shutil.rmtree(old)
            build.rename(base)  # atomic: the cache is whole or absent
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    return base, True


def _debootstrap(release: str, target: Path, log: Path) -> None:
    mirror = debian_mirror()
    argv = ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", release, str(target), mirror]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        out.write(" ".join(argv) + "\n")
        out.flush()
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=False)
    code = done.returncode
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        raise LabError(f"debootstrap {release} from {mirror} failed (exit {code}): {' '.join(tail)} (log: {log})")


def _finish_base(root: Path, release: str) -> None:
    # Hosts get their own keys and machine-id; the base must not hand out shared ones.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    marker = {"release": release, "packages": PACKAGES, "mirror": debian_mirror(), "built": time.time()}
    (root / MARKER).write_text(json.dumps(marker) + "\n")


def _keypair(comment: str) -> tuple[bytes, str]:
    """A new ed25519 key: (OpenSSH private key PEM, `ssh-ed25519 AAAA... comment`)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {comment}".strip()


def mirror_hosts() -> list[str]:
    """Host names the lab's package proxy may forward to: the mirror the base was built from."""
    from urllib.parse import urlsplit

    host = urlsplit(debian_mirror()).hostname
    return [host] if host else []


def write_file(path: Path, text: str) -> None:
    """A world-readable file inside a host's layer."""
    _write(path, text, 0o644)


def _write(path: Path, data: str | bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


def ensure_client_key(lab_dir: Path) -> str:
    """The lab's SSH client key (created once per lab); returns its public line."""
    private = lab_dir / CLIENT_KEY
    public = private.with_suffix(".pub")
    if private.is_file() and public.is_file():
        return public.read_text().strip()
    key, pub = _keypair("sipops-lab")
    _write(private, key, 0o600)
    _write(public, pub + "\n", 0o644)
    return pub


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        return any(line.split()[4] == target for line in info)


def mount_layer(state: LabState, member: Member, base: Path) -> Path:
    """Mount the member's overlay (upper/work under the lab dir, lower = base) and return its root."""
    hdir = state.host_dir(member.name)
    for sub in ("upper", "work", "root"):
        (hdir / sub).mkdir(parents=True, exist_ok=True)
    root = state.root(member.name)
    member.mounted = True
    state.save()
    if not is_mounted(root):
        opts = f"lowerdir={base},upperdir={hdir / 'upper'},workdir={hdir / 'work'}"
        run(["mount", "-t", "overlay", f"{state.prefix}-{member.name}", "-o", opts, str(root)])
    return root


def unmount_layer(state: LabState, member: Member, *, remove: bool = True) -> None:
    """Unmount the member's overlay (retrying while nspawn lets go) and remove its layer."""
    root = state.root(member.name)
    for _ in range(40):
        if not is_mounted(root) or succeeds(["umount", str(root)]):
            break
        time.sleep(0.25)
    if is_mounted(root):
        run(["umount", "-l", str(root)])
    member.mounted = False
    state.save()
    if remove and not is_mounted(root):
        shutil.rmtree(state.host_dir(member.name), ignore_errors=True)


def personalise(root: Path, member: Member, client_pub: str) -> str:
    """Give a host its own SSH host key, machine-id and hostname, and the lab's client key.

    Returns the host's public key line for known_hosts.
    """
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    private, public = _keypair(f"root@{member.name}")
    _write(root / "etc/ssh/ssh_host_ed25519_key", private, 0o600)
    _write(root / "etc/ssh/ssh_host_ed25519_key.pub", public + "\n", 0o644)
    _write(root / "etc/ssh/sshd_config.d/sipops-lab.conf", SSHD_DROP_IN, 0o644)
    _write(root / "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    _write(root / "etc/hostname", member.name + "\n", 0o644)
    _write(root / "etc/hosts", f"127.0.0.1 localhost\n{member.address} {member.name}\n", 0o644)
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    _write(ssh_dir / "authorized_keys", client_pub + "\n", 0o600)
    return " ".join(public.split()[:2])


def copy_install(root: Path, prefix: Path) -> None:
    """Copy a local install (e.g. /usr/local/opensips) into the host at the same path."""
    target = root / prefix.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    run(["cp", "-a", "--", str(prefix), str(target)])


def destroy_cache() -> list[Path]:
    """Remove every cached base (refusing ones a running lab mounts); returns what was removed."""
    removed: list[Path] = []
    if not cache_dir().is_dir():
        return removed
    with _cache_lock():
        for base in sorted(cache_dir().glob("*-base")):
            if base_in_use(base):
                raise LabError(f"{base} is in use by a running lab; run `sipops lab down` first")
            shutil.rmtree(base)
            removed.append(base)
        for stale in cache_dir().glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
    return removed
