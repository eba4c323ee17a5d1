"""OpenSIPS layout per version and install method: every version difference lives here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

SUPPORTED_VERSIONS = ("3.4", "3.6")
SOURCE_PREFIX = "/usr/local/opensips"
# OpenSIPS has no compiled-in module path (a bare `loadmodule "tm.so"` is looked up by dlopen alone):
# its packages' sample cfg sets mpath, so ours must too. Debian/Ubuntu amd64 packages put modules here;
# RHEL-family packages under /usr/lib64/opensips/modules/ (set opensips_mpath there).
PACKAGE_MPATH = "/usr/lib/x86_64-linux-gnu/opensips/modules/"

_DS_COLUMNS_34 = (
    "id(int,auto) setid(int) destination(string) socket(string,null) state(int) probe_mode(int) "
    "weight(string) priority(int) attrs(string) description(string)"
)
_DS_COLUMNS_36 = (
    "id(int,auto) setid(int) destination(string) socket(string,null) state(int) probe_mode(int) "
    "weight(string) priority(int) attrs(string,null) description(string,null)"
)
_LB_COLUMNS = (
    "id(int,auto) group_id(int) dst_uri(string) resources(string) probe_mode(int) "
    "attrs(string,null) description(string,null)"
)
VERSION_DBTEXT_HEADER = "table_name(string) table_version(int)"

# What changed between the LTS releases we render for. Both use `socket=` (3.1+),
# `syslog_facility` (3.4 renamed log_facility) and udp_workers/tcp_workers (3.1+).
_VERSION_PARAMS: dict[str, dict[str, Any]] = {
    "3.4": {
        "facility_param": "syslog_facility",
        "socket_param": "socket",
        "dispatcher_table_version": 9,
        "load_balancer_table_version": 3,
        "location_table_version": 1013,
        # db_text headers, as in scripts/dbtext/opensips/ of each release: 3.4 declares the
        # dispatcher's attrs and description NOT NULL, 3.6 lets them be null.
        "dispatcher_dbtext_header": _DS_COLUMNS_34,
        "load_balancer_dbtext_header": _LB_COLUMNS,
    },
    "3.6": {
        "facility_param": "syslog_facility",
        "socket_param": "socket",
        "dispatcher_table_version": 9,
        "load_balancer_table_version": 3,
        "location_table_version": 1013,
        "dispatcher_dbtext_header": _DS_COLUMNS_36,
        "load_balancer_dbtext_header": _LB_COLUMNS,
    },
}


@dataclass(frozen=True)
class OpenSIPSLayout:
    """Paths and parameter names for one host's OpenSIPS, as templates and commands need them."""

    version: str
    install: str  # package | source | existing
    prefix: str
    bin: str
    cfg_dir: str
    cfg_file: str
    mpath: str  # the cfg's mpath: where loadmodule finds modules
    share_dir: str
    run_dir: str
    pid_file: str
    user: str
    group: str
    unit: str
    own_unit: bool  # True when sipops writes the systemd unit (source and existing installs)
    facility_param: str
    socket_param: str
    dispatcher_table_version: int
    load_balancer_table_version: int
    location_table_version: int
    dispatcher_dbtext_header: str
    load_balancer_dbtext_header: str
    version_dbtext_header: str = VERSION_DBTEXT_HEADER

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class HasVars(Protocol):
    """An inventory host (sipops.inventory.Host): only its merged variables are read here."""

    @property
    def vars(self) -> Mapping[str, Any]: ...


def layout(host: HasVars) -> OpenSIPSLayout:
    """The layout of a host's OpenSIPS, from its opensips_version, _install, _prefix and _mpath: the one
    place host variables become paths (render, install, service, tune-tcp all ask here)."""
    v = host.vars
    return build_layout(v["opensips_version"], v["opensips_install"], v.get("opensips_prefix"), v.get("opensips_mpath"))


def build_layout(version: str, install: str, prefix: str | None, mpath: str | None = None) -> OpenSIPSLayout:
    """The layout for a version (3.4/3.6) and install method; `prefix` only for existing installs."""
    params = _VERSION_PARAMS[version]
    if install == "package":
        root = "/usr"
        cfg_dir = "/etc/opensips"
        share = "/usr/share/opensips"
        module_path = mpath or PACKAGE_MPATH
    else:
        root = (prefix or SOURCE_PREFIX).rstrip("/") if install == "existing" else SOURCE_PREFIX
        cfg_dir = f"{root}/etc/opensips"
        share = f"{root}/share/opensips"
        module_path = mpath or f"{root}/lib64/opensips/modules/"
    return OpenSIPSLayout(
        version=version,
        install=install,
        prefix=root,
        bin=f"{root}/sbin/opensips",
        cfg_dir=cfg_dir,
        cfg_file=f"{cfg_dir}/opensips.cfg",
        mpath=module_path,
        share_dir=share,
        run_dir="/run/opensips",
        pid_file="/run/opensips/opensips.pid",
        user="opensips",
        group="opensips",
        unit="opensips.service",
        own_unit=install != "package",
        **params,
    )
