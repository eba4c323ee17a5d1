"""Output formats: text (a line per check), JSON, Nagios plugin output, Prometheus text exposition."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from sipops.host.health.model import Metric, Report, Status, worst

FORMATS = ("text", "json", "nagios", "prometheus")
TEXTFILE_NAME = "sipops.prom"
_NAGIOS_SAFE = re.compile(r"^[A-Za-z0-9_.:/-]+$")
_PROM_UNITS = {"s": "_seconds", "%": "_percent", "B": "", "c": "_total", "": ""}


def render_text(reports: list[Report]) -> str:
    """`[host ]check STATUS message`, a line per check."""
    lines = []
    many = len(reports) > 1
    for rep in reports:
        width = max((len(c.name) for c in rep.checks), default=0)
        for c in rep.checks:
            prefix = f"{rep.host}: " if many else ""
            lines.append(f"{prefix}{c.name:<{width}}  {c.status.name:<8}  {c.message}")
        if rep.changed:
            lines.append(f"{rep.host}: changed since the last run: {', '.join(rep.changed)}")
        if rep.alert:
            lines.append(f"{rep.host}: {rep.alert}")
    return "\n".join(lines) + "\n"


def render_json(reports: list[Report]) -> str:
    status = worst([r.status for r in reports]) if reports else Status.UNKNOWN
    data = {"status": status.name, "code": int(status), "hosts": [r.as_dict() for r in reports]}
    return json.dumps(data, indent=2) + "\n"


def _num(value: float) -> str:
    """Nagios/Prometheus numbers: integers without a fraction, others as short decimals."""
    if math.isnan(value) or math.isinf(value):
        return "U"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6g}" if abs(value) >= 1e-4 else f"{value:.6f}".rstrip("0")


def nagios_label(host: str | None, metric: Metric) -> str:
    """A perfdata label: host, name and label values joined; quoted unless plain (never = or ')."""
    parts = ([host] if host else []) + [metric.name] + [v for _, v in sorted(metric.labels.items())]
    label = "_".join(parts).replace("=", "_").replace("'", "_")
    return label if _NAGIOS_SAFE.match(label) else f"'{label}'"


def _uom(unit: str) -> str:
    return unit if unit in ("s", "%", "B", "c") else ""


def perfdata(metric: Metric, host: str | None = None) -> str:
    """'label'=value[UOM];[warn];[crit];[min];[max], trailing empty fields dropped."""
    fields = [f"{_num(metric.value)}{_uom(metric.unit)}"]
    for v in (metric.warning, metric.critical, metric.minimum, metric.maximum):
        fields.append("" if v is None else _num(v))
    return f"{nagios_label(host, metric)}=" + ";".join(fields).rstrip(";")


def render_nagios(reports: list[Report]) -> str:
    """First line `SIPOPS STATUS - summary | perfdata`; then a line per check (long output)."""
    status = worst([r.status for r in reports]) if reports else Status.UNKNOWN
    many = len(reports) > 1
    problems = [
        (f"{r.host} " if many else "") + f"{c.name}: {c.message}"
        for r in reports
        for c in sorted(r.checks, key=lambda c: -int(c.status == Status.CRITICAL))
        if c.status != Status.OK
    ]
    if problems:
        summary = problems[0] + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
    else:
        total = sum(len(r.checks) for r in reports)
        summary = f"{total} checks OK" + (f" on {len(reports)} hosts" if many else "")
    summary = summary.replace("|", "/")  # a | would start the perfdata
    perf = " ".join(perfdata(m, r.host if many else None) for r in reports for c in r.checks for m in c.metrics)
    lines = [f"SIPOPS {status.name} - {summary}" + (f" | {perf}" if perf else "")]
    for r in reports:
        for c in r.checks:
            lines.append(
                f"{r.host if many else ''}{' ' if many else ''}{c.name} {c.status.name}: {c.message}".replace("|", "/")
            )
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def render_prometheus(reports: list[Report]) -> str:
    """Text exposition: sipops_check_status per check, then each metric as a gauge with host labels."""
    families: dict[str, tuple[str, str, list[str]]] = {}  # name -> (type, help, samples)

    def add(name: str, kind: str, help_text: str, labels: dict[str, str], value: float) -> None:
        family = families.setdefault(name, (kind, help_text, []))
        family[2].append(f"{name}{_labels(labels)} {_num(value) if not math.isnan(value) else 'NaN'}")

    for r in reports:
        for c in r.checks:
            base = {"host": r.host, "check": c.name}
            add("sipops_check_status", "gauge", "check status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN", base, c.status)
            for m in c.metrics:
                unit = _PROM_UNITS.get(m.unit, "")
                name = f"sipops_{m.name}{unit}"
                if unit == "" and m.unit == "B" and not name.endswith("_bytes"):
                    name += "_bytes"
                kind = "counter" if m.unit == "c" else "gauge"
                add(name, kind, m.help or m.name.replace("_", " "), {**base, **m.labels}, m.value)
        add("sipops_host_status", "gauge", "worst check status of the host", {"host": r.host}, r.status)
        if r.checked_at:
            add(
                "sipops_health_last_run_timestamp_seconds",
                "gauge",
                "when the checks ran",
                {"host": r.host},
                r.checked_at,
            )
    out = []
    for name, (kind, help_text, samples) in families.items():
        out.append(f"# HELP {name} {_escape(help_text)}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(samples)
    return "\n".join(out) + "\n"


def write_textfile(directory: Path, text: str, name: str = TEXTFILE_NAME) -> Path:
    """Write atomically (temp file in the same directory, then rename): node_exporter never sees half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    # node_exporter only reads *.prom: the temp name must not end in .prom.
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


def render(fmt: str, reports: list[Report]) -> str:
    if fmt == "json":
        return render_json(reports)
    if fmt == "nagios":
        return render_nagios(reports)
    if fmt == "prometheus":
        return render_prometheus(reports)
    return render_text(reports)
