"""Which operating systems sipops installs on, and what each one uses (package manager, firewall)."""

from __future__ import annotations

from dataclasses import dataclass


class UnsupportedOS(Exception):
    """The host runs an OS sipops does not install on; the message says which and what is supported."""


@dataclass(frozen=True)
class OsInfo:
    id: str  # debian, ubuntu, rocky, almalinux, rhel, centos
    version: str  # major version ("12", "22.04", "9")
    codename: str  # bookworm, jammy; "" on RHEL-family
    family: str  # debian | rhel
    pkg: str  # apt | dnf | yum
    firewall: str  # nftables | firewalld | iptables
    pretty: str

    @property
    def el(self) -> str:
        """RHEL major version ("8", "9", "7") for yum.opensips.org paths."""
        return self.version.split(".")[0]


_DEBIAN = {"11": "bullseye", "12": "bookworm", "13": "trixie"}
_UBUNTU = {"22.04": "jammy", "24.04": "noble"}
_EL = {"rocky": ("8", "9"), "almalinux": ("8", "9"), "rhel": ("8", "9"), "centos": ("7",)}

SUPPORTED = "Debian 11/12/13, Ubuntu 22.04/24.04, Rocky/Alma/RHEL 8/9, CentOS 7"


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines of /etc/os-release, unquoted."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def detect(os_release: dict[str, str]) -> OsInfo:
    """The supported OS described by /etc/os-release, or UnsupportedOS naming what was found."""
    os_id = os_release.get("ID", "").lower()
    version = os_release.get("VERSION_ID", "")
    pretty = os_release.get("PRETTY_NAME") or f"{os_id} {version}".strip() or "an unknown OS"
    if os_id == "debian":
        major = version.split(".")[0]
        codename = os_release.get("VERSION_CODENAME") or _DEBIAN.get(major, "")
        if major in _DEBIAN:
            return OsInfo("debian", major, codename, "debian", "apt", "nftables", pretty)
    elif os_id == "ubuntu":
        if version in _UBUNTU:
            codename = os_release.get("VERSION_CODENAME") or _UBUNTU[version]
            return OsInfo("ubuntu", version, codename, "debian", "apt", "nftables", pretty)
    elif os_id in _EL:
        major = version.split(".")[0]
        if major in _EL[os_id]:
            if os_id == "centos":
                return OsInfo(os_id, major, "", "rhel", "yum", "firewalld", pretty)
            return OsInfo(os_id, major, "", "rhel", "dnf", "firewalld", pretty)
    raise UnsupportedOS(f"{pretty} is not supported (supported: {SUPPORTED})")
