"""The whole install plan of one host: inputs from the inventory and facts, then each phase's steps."""

from __future__ import annotations

from typing import Any

from sipops.provision import phases, services
from sipops.provision.osinfo import OsInfo
from sipops.provision.steps import PhasePlan
from sipops.render import HostRender

YUM_RELEASE_RPM = (
    "https://yum.opensips.org/{version}/releases/el/{el}/x86_64/opensips-yum-releases-{version}-1.el{el}.noarch.rpm"
)


def inputs(rendered: HostRender, os: OsInfo) -> phases.InstallInputs:
    """What the phases need for the rendered host on `os` (from the context its files were rendered with)."""
    ctx, host, lay = rendered.context, rendered.host, rendered.layout
    release = ctx.get("opensips_release") or phases.DEFAULT_RELEASE[lay.version]
    pm_key = "apt" if os.pkg == "apt" else "dnf"
    pkgs: list[str] = []
    for r in host.role_objs:
        pkgs += [p for p in r.packages.get(pm_key, []) if p not in pkgs]
    module_packages = list(ctx["opensips_packages"])
    db = services.parse_db_url(ctx["db_url"])
    if db.scheme == "sqlite" and lay.version == "3.6" and database_schemas(ctx):
        module_packages.append("opensips-sqlite-dbschema")  # 3.6 ships the schema files apart
    return phases.InstallInputs(
        os=os,
        layout=lay,
        modules=tuple(ctx["modules"]),
        module_packages=tuple(dict.fromkeys(module_packages)),
        packages=tuple(pkgs),
        release=release,
        source=ctx.get("opensips_source_url") or phases.SOURCE_URL.format(release=release),
        yum_release_rpm=ctx.get("opensips_yum_release_rpm") or YUM_RELEASE_RPM.format(version=lay.version, el=os.el),
        apt_url=ctx["opensips_apt_url"],
        apt_key_url=ctx["opensips_apt_key_url"],
        crowdsec_capi=bool(ctx.get("crowdsec_capi", True)),
    )


def database_schemas(ctx: dict[str, Any]) -> list[str]:
    """Schema files the host's roles need in db_url (empty: nothing is kept in a database)."""
    roles = ctx["roles"]
    want = []
    if "registrar" in roles and ctx.get("registrar_persist"):
        want.append("usrloc")
    if "registrar" in roles and ctx.get("registrar_auth"):
        want.append("auth_db")
    return ["standard", *want] if want else []


def firewall_backend(os: OsInfo, facts_has_nft: bool, facts_has_firewalld: bool) -> str:
    if os.family == "debian" and facts_has_nft:
        return "nftables"
    if os.family == "rhel" and facts_has_firewalld:
        return "firewalld"
    return "nftables" if facts_has_nft else "iptables"


def install_plan(
    rendered: HostRender,
    os: OsInfo,
    *,
    firewall: str = "nftables",
    log_marker: str = "sipops install probe",
    in_container: bool = False,
) -> list[PhasePlan]:
    """Every phase's steps, in order. Files (cfg, rsyslog, logrotate, limits, units, nft) go through push."""
    inp, ctx, host = inputs(rendered, os), rendered.context, rendered.host
    sockets = ctx["sip_sockets"]
    ports = ctx["firewall_ports"]
    udp = sorted({s["port"] for s in sockets if s["proto"] == "udp"})
    tcp = sorted({s["port"] for s in sockets if s["proto"] != "udp"} | set(ctx["extra_tcp_ports"]))
    private = sorted({p["port"] for p in ports if p["from"] == "allowlist"})
    deps = phases.dependencies(inp)
    if "mediarelay" in host.roles:  # said where the operator looks: the relay does not use the kernel module
        relay = "rtpengine-daemon: userspace forwarding (the kernel forwarding module is not used)"
        deps.note = f"{deps.note}; {relay}" if deps.note else relay
    plan = [
        deps,
        phases.opensips(inp),
        phases.directories(inp.layout),
        services.limits_check(in_container),
        services.database(inp.layout, services.parse_db_url(ctx["db_url"]), database_schemas(ctx)),
    ]
    if ctx["firewall"]:
        plan.append(services.firewall(os, firewall, udp, tcp, private, list(ctx["allowlist"])))
    plan.append(services.logging_proof(ctx["log_file"], ctx["log_facility"], log_marker))
    plan.append(services.service(inp.layout))
    return plan
