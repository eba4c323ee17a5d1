"""The checks that ask OpenSIPS itself over MI: reachability, shared memory, load, gateways."""

from __future__ import annotations

from typing import Any

from sipops.host.health.config import HealthConfig
from sipops.host.health.mi import METHOD_NOT_FOUND, Gateway, MIError, parse_ds_list, parse_lb_list
from sipops.host.health.model import CheckResult, Metric, Status, level
from sipops.host.health.sources import Sources

# One get_statistics call serves mi, shmem and load (the sources cache it per run).
STATISTICS = {"statistics": ["shmem:", "load:", "usrloc:", "dialog:", "core:"]}


def _stats(src: Sources) -> dict[str, Any]:
    result = src.mi("get_statistics", STATISTICS)
    if not isinstance(result, dict):
        raise MIError("get_statistics: unexpected reply")
    return result


def _number(stats: dict[str, Any], key: str) -> float | None:
    value = stats.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def check_mi(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """MI answers over HTTP; registrations and dialogs from get_statistics."""
    try:
        version = src.mi("version")
        stats = _stats(src)
    except MIError as exc:
        return CheckResult("mi", Status.CRITICAL, f"MI unreachable: {exc}")
    server = version.get("Server", "OpenSIPS") if isinstance(version, dict) else "OpenSIPS"
    metrics: list[Metric] = []
    parts = [f"{server} answers at {cfg.mi_url}"]
    for key, name, label in (
        ("usrloc:registered_users", "registrations", "registered users"),
        ("dialog:active_dialogs", "dialogs", "active dialogs"),
    ):
        value = _number(stats, key)
        if value is not None:
            metrics.append(Metric(name, value, "", minimum=0, help=f"{label} (MI {key})"))
            parts.append(f"{int(value)} {label}")
    for key, name in (("core:rcv_requests", "received_requests"), ("core:err_requests", "error_requests")):
        value = _number(stats, key)
        if value is not None:
            metrics.append(Metric(name, value, "c", minimum=0, help=f"MI {key} since start"))
    return CheckResult("mi", Status.OK, ", ".join(parts), metrics)


def _mi_unknown(name: str, exc: MIError) -> CheckResult:
    return CheckResult(name, Status.UNKNOWN, f"no MI statistics: {exc}")


def check_shmem(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """Shared memory used (real_used_size, fragments included) against total_size."""
    try:
        stats = _stats(src)
    except MIError as exc:
        return _mi_unknown("shmem", exc)
    total = _number(stats, "shmem:total_size")
    used = _number(stats, "shmem:real_used_size") or _number(stats, "shmem:used_size")
    if not total or used is None:
        return CheckResult("shmem", Status.UNKNOWN, "get_statistics has no shmem:total_size / real_used_size")
    t = cfg.thresholds
    pct = round(100 * used / total, 2)
    status = level(pct, t.shm_warning, t.shm_critical)
    metrics = [
        Metric("shmem_used", pct, "%", t.shm_warning, t.shm_critical, 0, 100, help="shared memory used, percent"),
        Metric("shmem_used_bytes", used, "B", minimum=0, maximum=total, help="shared memory used (MI)"),
        Metric("shmem_total_bytes", total, "B", minimum=0, help="shared memory size (MI)"),
    ]
    max_used = _number(stats, "shmem:max_used_size")
    if max_used is not None:
        metrics.append(Metric("shmem_max_used_bytes", max_used, "B", minimum=0, maximum=total, help="peak (MI)"))
    text = f"{used / 2**20:.1f} of {total / 2**20:.0f} MiB shared memory used ({pct:g}%)"
    return CheckResult("shmem", status, text, metrics)


def check_load(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """Busy share of the OpenSIPS workers (load:load1m; the last second and 10 minutes as metrics)."""
    try:
        stats = _stats(src)
    except MIError as exc:
        return _mi_unknown("load", exc)
    windows = {"1s": "load:load", "1m": "load:load1m", "10m": "load:load10m"}
    values = {w: _number(stats, key) for w, key in windows.items()}
    if values["1m"] is None and values["1s"] is None:
        return CheckResult("load", Status.UNKNOWN, "get_statistics has no load:load1m")
    t = cfg.thresholds
    judged = values["1m"] if values["1m"] is not None else values["1s"]
    assert judged is not None
    status = level(judged, t.load_warning, t.load_critical)
    metrics = [
        Metric("load", v, "%", t.load_warning if w == "1m" else None, t.load_critical if w == "1m" else None,
               0, 100, {"window": w}, "busy share of the OpenSIPS processes, percent")
        for w, v in values.items() if v is not None
    ]  # fmt: skip
    shown = ", ".join(f"{v:g}% ({w})" for w, v in values.items() if v is not None)
    return CheckResult("load", status, f"load {shown}", metrics)


def check_gateways(cfg: HealthConfig, src: Sources, state: dict[str, Any]) -> CheckResult:
    """Dispatcher / load-balancer destinations down: some down is WARNING, a whole set down CRITICAL."""
    engine = cfg.gateway_engine
    if engine is None:
        return CheckResult("gateways", Status.OK, "no dispatcher or load_balancer on this host")
    method = "ds_list" if engine == "dispatcher" else "lb_list"
    try:
        result = src.mi(method)
    except MIError as exc:
        if exc.code == METHOD_NOT_FOUND:
            return CheckResult("gateways", Status.UNKNOWN, f"{method}: the {engine} module is not loaded")
        return CheckResult("gateways", Status.UNKNOWN, f"{method}: {exc}")
    gateways = parse_ds_list(result) if engine == "dispatcher" else parse_lb_list(result)
    return judge_gateways(method, gateways, cfg.gateways)


def drift(running: list[Gateway], expected: tuple[tuple[str, str], ...]) -> list[str]:
    """How the running destinations differ from the inventory's: '+' running only, '-' missing."""
    have = {(g.group, g.uri) for g in running}
    want = set(expected)
    return [f"-{group} {uri}" for group, uri in sorted(want - have)] + [
        f"+{group} {uri}" for group, uri in sorted(have - want)
    ]


def judge_gateways(
    method: str, gateways: list[Gateway], expected: tuple[tuple[str, str], ...] | None = None
) -> CheckResult:
    """Down destinations (some: WARNING, a whole set: CRITICAL) and drift from the inventory (WARNING)."""
    result = _judge_down(method, gateways)
    if expected is None:  # a health.json from before sipops knew the sets: nothing to compare with
        return result
    differs = drift(gateways, expected)
    result.metrics.append(
        Metric("gateways_drift", len(differs), "", 1, None, 0, help=f"{method} entries that differ from the inventory")
    )
    if not differs:
        return result
    shown = ", ".join(differs[:6]) + (f" and {len(differs) - 6} more" if len(differs) > 6 else "")
    text = f"{method} differs from the inventory (- missing, + not in the inventory): {shown}"
    if result.status == Status.OK:
        return CheckResult("gateways", Status.WARNING, text, result.metrics)
    return CheckResult("gateways", result.status, f"{result.message}; {text}", result.metrics)


def _judge_down(method: str, gateways: list[Gateway]) -> CheckResult:
    down = [g for g in gateways if not g.up]
    groups: dict[str, list[Gateway]] = {}
    for g in gateways:
        groups.setdefault(g.group, []).append(g)
    dead_groups = sorted(name for name, members in groups.items() if all(not g.up for g in members))
    metrics = [
        Metric("gateways", len(gateways), "", minimum=0, help=f"destinations in {method}"),
        Metric("gateways_down", len(down), "", 1, None, 0, len(gateways), help=f"destinations down in {method}"),
    ]
    if not gateways:
        return CheckResult("gateways", Status.OK, f"{method}: no destinations", metrics)
    listed = ", ".join(f"{g.uri} ({g.group}, {g.state})" for g in down[:5])
    more = f" and {len(down) - 5} more" if len(down) > 5 else ""
    if dead_groups:
        text = f"every destination of {', '.join(dead_groups)} is down: {listed}{more}"
        return CheckResult("gateways", Status.CRITICAL, text, metrics)
    if down:
        return CheckResult("gateways", Status.WARNING, f"{len(down)} of {len(gateways)} down: {listed}{more}", metrics)
    return CheckResult("gateways", Status.OK, f"{len(gateways)} destinations up ({method})", metrics)
