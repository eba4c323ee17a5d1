"""`lab up`, `down`, `status`, `destroy`: plain functions the CLI hands off to."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import TextIO

from sipops.errors import InputError
from sipops.lab import aptproxy, hosts, net, rootfs
from sipops.lab.invfile import INVENTORY_FILE, KNOWN_HOSTS, write_files
from sipops.lab.proc import LabError
from sipops.lab.state import DEFAULT_NETWORK, DEFAULT_PREFIX, LabState, Member, Naming, check_counts

DEFAULT_DIR = Path("lab")
_RELEASE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
_HOST_MOUNTS = tuple(Path(p) for p in ("/tmp", "/run", "/proc", "/sys", "/dev"))
REQUIRED = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "ip": "iproute2"}


def lab_dir(given: Path | None) -> Path:
    """--dir, else $SIPOPS_LAB_DIR, else ./lab; always absolute (mount options and /proc/mounts use it)."""
    if given is not None:
        return given.absolute()
    return Path(os.environ.get("SIPOPS_LAB_DIR") or DEFAULT_DIR).absolute()


def preflight(*, need: tuple[str, ...] = tuple(REQUIRED)) -> None:
    """InputError naming what is missing: root, or a tool and the Debian package that has it."""
    if os.geteuid() != 0:
        raise InputError("sipops lab needs root (namespaces, mounts, systemd-nspawn); run it with sudo")
    absent = [tool for tool in need if shutil.which(tool) is None]
    if absent:
        named = ", ".join(f"{tool} (Debian package {REQUIRED[tool]})" for tool in absent)
        raise InputError(f"sipops lab needs {named}: apt-get install {' '.join(REQUIRED[t] for t in absent)}")


@dataclass
class UpOptions:
    hosts: int = 3
    attackers: int = 0
    release: str = "bookworm"
    rebuild: bool = False
    opensips_prefix: Path | None = None
    opensips_source: Path | None = None  # a release tarball the hosts build (opensips_install: source)
    prefix: str = DEFAULT_PREFIX
    network: IPv4Network = DEFAULT_NETWORK
    boot_timeout: float = 60.0


@dataclass
class UpResult:
    inventory: Path
    base_built: bool
    seconds: float
    state: LabState = field(repr=False)


def _check_options(opts: UpOptions) -> Naming:
    check_counts(opts.hosts, opts.attackers)
    if not _RELEASE.match(opts.release):
        raise InputError(f"not a Debian release name: {opts.release!r}", field="--release")
    prefix = opts.opensips_prefix
    if opts.opensips_source is not None:
        if prefix is not None:
            raise InputError("give --opensips-prefix or --opensips-source, not both", field="--opensips-source")
        if not opts.opensips_source.is_file():
            message = f"must be an OpenSIPS release tarball (.tar.gz), got {str(opts.opensips_source)!r}"
            raise InputError(message, field="--opensips-source")
    if prefix is not None and (not prefix.is_absolute() or not prefix.is_dir() or prefix == Path("/")):
        message = f"must be an existing absolute directory other than /, got {str(prefix)!r}"
        raise InputError(message, field="--opensips-prefix")
    if prefix is not None and any(prefix.is_relative_to(p) for p in _HOST_MOUNTS):
        # nspawn and systemd mount their own filesystems there, which would hide the copy.
        message = f"{prefix} would be hidden inside the hosts (a tmpfs or API filesystem is mounted there)"
        raise InputError(message, field="--opensips-prefix")
    return Naming(opts.prefix, opts.network)


_SOURCE_TOP = re.compile(r"^(?:\./)?opensips-(\d+\.\d+)\.(\d+)/?")


def opensips_source_release(tarball: Path) -> str:
    """The full release (3.6.8) of an OpenSIPS release tarball, from its one top folder `opensips-X.Y.Z/`."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            first = tar.next()
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise InputError(f"{tarball}: not a readable .tar.gz ({exc})", field="--opensips-source") from None
    m = _SOURCE_TOP.match(first.name) if first is not None else None
    if m is None:
        top = first.name.split("/")[0] if first is not None else "nothing"
        message = f"{tarball}: not an OpenSIPS release tarball (its top folder is {top!r}, not opensips-X.Y.Z)"
        raise InputError(message, field="--opensips-source")
    if m.group(1) not in ("3.4", "3.6"):
        message = f"{tarball} is OpenSIPS {m.group(1)}; sipops runs 3.4 and 3.6"
        raise InputError(message, field="--opensips-source")
    return f"{m.group(1)}.{m.group(2)}"


def opensips_line(prefix: Path) -> str:
    """The LTS line (3.4, 3.6) of the OpenSIPS build at prefix, from `opensips -V`; InputError otherwise."""
    binary = prefix / "sbin" / "opensips"
    try:
        out = subprocess.run([str(binary), "-V"], capture_output=True, text=True, timeout=30, check=False).stdout
    except OSError as exc:
        raise InputError(f"cannot run {binary}: {exc.strerror}", field="--opensips-prefix") from None
    m = re.search(r"opensips (\d+\.\d+)\.", out)
    if m is None or m.group(1) not in ("3.4", "3.6"):
        found = m.group(1) if m else "no version"
        raise InputError(f"{binary} is OpenSIPS {found}; sipops runs 3.4 and 3.6", field="--opensips-prefix")
    return m.group(1)


def _plan(directory: Path, opts: UpOptions, naming: Naming) -> LabState:
    state = LabState(dir=directory, prefix=opts.prefix, network=str(opts.network), release=opts.release)
    state.opensips_prefix = str(opts.opensips_prefix) if opts.opensips_prefix else None
    for i in range(1, opts.hosts + 1):
        name = naming.host_name(i)
        address = str(naming.host_address(i))
        state.members.append(Member(name, "host", address, naming.netns(name), naming.veth(name)))
    for i in range(1, opts.attackers + 1):
        name = naming.attacker_name(i)
        address = str(naming.attacker_address(i))
        state.members.append(Member(name, "attacker", address, naming.netns(name), naming.veth(name)))
    return state


def _refuse_foreign(state: LabState) -> None:
    """Names we would create must not exist yet: they belong to someone else (or another lab)."""
    taken = [state.naming.bridge] if net.link_exists(state.naming.bridge) else []
    taken += net.addresses_in(state.naming.network)
    for m in state.members:
        taken += [m.netns] if net.netns_exists(m.netns) else []
        taken += [m.veth] if net.link_exists(m.veth) else []
    if taken:
        raise InputError(
            f"{', '.join(taken)} already exist(s) and {state.path} does not record them: another lab is up"
            " (stop it with `sipops lab down --dir ITS_DIR`)"
        )


def up(directory: Path, opts: UpOptions, *, log: Callable[[str], None] = print) -> UpResult:
    """Build (or reuse) the base, then network, layers and boot; any failure undoes what was made."""
    started = time.monotonic()
    naming = _check_options(opts)
    source_release = opensips_source_release(opts.opensips_source) if opts.opensips_source else None
    preflight()
    old = LabState.load(directory)
    if old is not None and old.members:
        raise InputError(f"a lab is already up here ({old.path}); run `sipops lab down` first")
    state = _plan(directory, opts, naming)
    if opts.opensips_prefix:
        state.opensips_version = opensips_line(opts.opensips_prefix)
    if opts.opensips_source and source_release:
        # The hosts build it on `sipops install` (build deps through the lab's package proxy).
        state.opensips_source = str(opts.opensips_source.absolute())
        state.opensips_release = source_release
        state.opensips_version = source_release.rsplit(".", 1)[0]
    _refuse_foreign(state)
    directory.mkdir(parents=True, exist_ok=True)
    if not rootfs.base_ready(rootfs.base_path(opts.release)) or opts.rebuild:
        log(f"building the {opts.release} base in {rootfs.base_path(opts.release)} (about a minute)")
    base, built = rootfs.ensure_base(opts.release, rebuild=opts.rebuild, log=directory / "logs" / "debootstrap.log")
    state.base = str(base)
    state.save()
    try:
        _build(state, base, opts)
    except BaseException:
        try:
            down(directory, log=lambda _: None)
        except Exception as exc:  # the original error matters more; down can be re-run
            print(f"sipops lab: cleanup after the failure also failed: {exc}", file=sys.stderr)
        raise
    return UpResult(directory / INVENTORY_FILE, built, time.monotonic() - started, state)


def _build(state: LabState, base: Path, opts: UpOptions) -> None:
    net.ensure_guard_route(state)  # before any link exists
    net.create_bridge(state)
    for member in state.members:
        net.create_member_net(state, member)
    client_pub = rootfs.ensure_client_key(state.dir)
    (state.dir / "logs").mkdir(parents=True, exist_ok=True)

    hosts.start_apt_proxy(state, rootfs.mirror_hosts())
    proxy_conf = aptproxy.apt_conf(str(state.naming.bridge_address))

    def layer(member: Member) -> tuple[str, str]:
        root = rootfs.mount_layer(state, member, base)
        key = rootfs.personalise(root, member, client_pub)
        rootfs.write_file(root / "etc/apt/apt.conf.d/00sipops-lab-proxy", proxy_conf)
        if opts.opensips_prefix is not None:
            rootfs.copy_install(root, opts.opensips_prefix)
        return member.address, key

    with ThreadPoolExecutor(max_workers=4) as pool:
        host_keys = dict(pool.map(layer, state.hosts()))
    write_files(state, host_keys)
    hosts.boot(state, state.hosts(), timeout=opts.boot_timeout)


def down(directory: Path, *, log: Callable[[str], None] = print) -> bool:
    """Stop hosts and remove everything the state file records; idempotent. False if no lab was there."""
    state = LabState.load(directory)
    if state is None:
        log(f"no lab in {directory}")
        return False
    preflight(need=("ip",))
    errors: list[str] = []

    def attempt(step: Callable[[], None]) -> None:
        try:
            step()
        except (LabError, OSError) as exc:
            errors.append(str(exc))

    attempt(lambda: hosts.stop(state, state.hosts()))
    attempt(lambda: hosts.stop_apt_proxy(state))
    for member in state.hosts():
        attempt(lambda m=member: rootfs.unmount_layer(state, m))  # type: ignore[misc]
    for member in state.members:
        attempt(lambda m=member: net.delete_member_net(state, m))  # type: ignore[misc]
    attempt(lambda: net.delete_bridge(state))
    attempt(lambda: net.remove_guard_route(state))
    if errors:
        state.save()  # keep the record so another `down` can finish the job
        raise LabError("; ".join(errors))
    for path in (directory / INVENTORY_FILE, directory / KNOWN_HOSTS.parent, directory / "hosts"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    state.path.unlink(missing_ok=True)
    log(f"lab in {directory} is down")
    return True


def restart(directory: Path, name: str, *, timeout: float = 60.0) -> float:
    """Power a host off and boot it again on the same layer, as a reboot would; seconds until SSH answers."""
    started = time.monotonic()
    preflight(need=("systemd-nspawn",))
    state = LabState.load(directory)
    if state is None or not state.members:
        raise InputError(f"no lab in {directory}; start one with `sipops lab up`")
    member = state.member(name)
    if member.kind != "host":
        raise InputError(f"{name} is an attacker (a bare namespace): only hosts boot", field="HOST")
    hosts.stop(state, [member])
    hosts.start(state, member)
    hosts.wait_ssh(state, [member], timeout=timeout)
    return time.monotonic() - started


def destroy(directory: Path, *, log: Callable[[str], None] = print) -> None:
    """`down`, then remove the cached base filesystems too."""
    preflight(need=())
    down(directory, log=log)
    for base in rootfs.destroy_cache():
        log(f"removed {base}")


@dataclass(frozen=True)
class MemberStatus:
    name: str
    kind: str
    address: str
    running: bool
    ssh: bool | None  # None for attackers


def status(directory: Path) -> list[MemberStatus]:
    """Each member: running, and for hosts whether SSH with strict host keys gets a shell."""
    state = LabState.load(directory)
    if state is None:
        return []

    def check(m: Member) -> MemberStatus:
        if m.kind == "attacker":
            return MemberStatus(m.name, m.kind, m.address, net.netns_exists(m.netns), None)
        running = hosts.is_running(m)
        return MemberStatus(m.name, m.kind, m.address, running, running and ssh_works(state, m))

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(check, state.members))


def ssh_works(state: LabState, member: Member) -> bool:
    from sipops.lab.access import lab_host  # paramiko is slow to import; only status needs it
    from sipops.remote.transport import connect

    try:
        with connect(lab_host(state, member), connect_timeout=5) as conn:
            return conn.run("true", hide=True, warn=True).ok is True
    except Exception:
        return False


def print_status(rows: list[MemberStatus], directory: Path, out: TextIO) -> None:
    if not rows:
        print(f"no lab in {directory}", file=out)
        return
    print(f"{'NAME':<6} {'KIND':<9} {'ADDRESS':<14} {'RUNNING':<8} SSH", file=out)
    for r in rows:
        ssh = "-" if r.ssh is None else ("yes" if r.ssh else "no")
        print(f"{r.name:<6} {r.kind:<9} {r.address:<14} {'yes' if r.running else 'no':<8} {ssh}", file=out)
