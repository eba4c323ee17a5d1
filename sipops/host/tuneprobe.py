"""Runs ON the host (python3, stdlib only): what tune-tcp needs to know, and to read back after apply.

Its bundle holds the push agent too (sipops.remote.ship), so one run answers both: the push engine's
facts (files, units, validators) and these (RAM, cores, container, live
sysctl values and whether they are writable here, the service's LimitNOFILE, the opensips user's
nofile, the running OpenSIPS's limits and parameters).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import subprocess
from typing import IO, Any

from sipops.host.agent import facts as push_facts

Json = dict[str, Any]
_PARAM = re.compile(r"^\s*(tcp_max_connections|open_files_limit|tcp_workers)\s*=\s*(\d+)", re.M)
_SHM_ARG = re.compile(r"(?:^|\s)-m\s*(\d+)")


def main(req: Json, stream: IO[bytes], size: int) -> Json:
    """Entry point (sipops.tuning.facts.run_probe)."""
    out = tune_facts(req)
    if req.get("push"):
        out["push"] = push_facts(req["push"])
    return out


def tune_facts(req: Json) -> Json:
    root = str(req.get("root") or "")
    keys = list(req.get("keys", []))
    sysctl: Json = {}
    writable: Json = {}
    for key in keys:
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path) as fh:
                sysctl[key] = " ".join(fh.read().split())
            writable[key] = os.access(path, os.W_OK)
        except OSError:
            sysctl[key], writable[key] = None, False
    unit = tune_unit(str(req.get("unit") or "opensips.service"))
    process = tune_process(str(req.get("process") or "opensips"))
    params: Json = {}
    cfg = req.get("cfg")
    if cfg:
        with contextlib.suppress(OSError), open(root + cfg) as fh:
            params = {m.group(1): int(m.group(2)) for m in _PARAM.finditer(fh.read())}
    shm = process.get("shm_mb") if process else None
    for path in req.get("unit_files", []):
        if shm is not None:
            break
        with contextlib.suppress(OSError), open(root + path) as fh:
            for line in fh:
                if line.startswith("ExecStart=") and (m := _SHM_ARG.search(line)):
                    shm = int(m.group(1))
    if shm is not None:
        params["shm_mb"] = shm
    return {
        "ok": True,
        "mem_mb": tune_mem_mb(),
        "cpus": len(os.sched_getaffinity(0)),
        "container": tune_container(),
        "sysctl": sysctl,
        "writable": writable,
        "unit": unit,
        "user_nofile": tune_user_nofile(root, str(req.get("user") or "opensips")),
        "process": process,
        "opensips": params,
    }


def tune_mem_mb() -> int:
    total = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) // 1024
    # A container's memory limit, when it has one, is what OpenSIPS can really use.
    with contextlib.suppress(OSError, ValueError), open("/sys/fs/cgroup/memory.max") as fh:
        text = fh.read().strip()
        if text.isdigit():
            total = min(total, int(text) // (1 << 20)) if total else int(text) // (1 << 20)
    return total


def tune_container() -> str | None:
    """systemd-detect-virt -c, else /run/systemd/container, else container= in PID 1's environment."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        p = subprocess.run(["systemd-detect-virt", "-c"], capture_output=True, text=True, timeout=5, check=False)
        name = p.stdout.strip()
        if name and name != "none":
            return name
        if p.returncode in (0, 1) and name == "none":
            return None
    with contextlib.suppress(OSError), open("/run/systemd/container") as fh:
        name = fh.read().strip()
        if name:
            return name
    with contextlib.suppress(OSError), open("/proc/1/environ", "rb") as fhb:
        for item in fhb.read().split(b"\0"):
            if item.startswith(b"container="):
                return item[10:].decode(errors="replace") or "container"
    if os.path.exists("/.dockerenv"):
        return "docker"
    return None


def tune_unit(unit: str) -> Json:
    """LoadState and LimitNOFILE (soft) of a systemd unit; {} without systemd."""
    if not os.path.isdir("/run/systemd/system"):
        return {}
    try:
        p = subprocess.run(
            ["systemctl", "show", "-p", "LoadState,ActiveState,LimitNOFILE,LimitNOFILESoft,MainPID", "--", unit],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    kv = dict(line.partition("=")[::2] for line in p.stdout.splitlines())
    out: Json = {"name": unit, "load": kv.get("LoadState", ""), "active": kv.get("ActiveState", "")}
    soft = kv.get("LimitNOFILESoft") or kv.get("LimitNOFILE") or ""
    out["nofile"] = int(soft) if soft.isdigit() else None
    out["main_pid"] = int(kv["MainPID"]) if kv.get("MainPID", "").isdigit() else 0
    return out


def tune_user_nofile(root: str, user: str) -> int | None:
    """The user's nofile from limits.conf and limits.d (lower of soft and hard; the user's own lines
    win over `*`); None when nothing sets it."""
    files = [root + "/etc/security/limits.conf", *sorted(glob.glob(root + "/etc/security/limits.d/*.conf"))]
    own: dict[str, int] = {}
    wild: dict[str, int] = {}
    for path in files:
        try:
            with open(path) as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        for line in lines:
            cols = line.split("#", 1)[0].split()
            if len(cols) != 4 or cols[2] != "nofile":
                continue
            value = 1 << 30 if cols[3] in ("unlimited", "infinity") else int(cols[3]) if cols[3].isdigit() else None
            if value is None:
                continue
            kinds = ("soft", "hard") if cols[1] == "-" else (cols[1],)
            target = own if cols[0] == user else wild if cols[0] == "*" else None
            if target is not None:
                for k in kinds:
                    target[k] = value
    chosen = own or wild
    return min(chosen.values()) if chosen else None


def tune_process(comm: str) -> Json | None:
    """The main process named `comm` (its parent is not one): pid, nofile soft/hard, -m of its command line."""
    pids = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/comm") as fh:
                if fh.read().strip() != comm:
                    continue
            with open(f"/proc/{pid}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{ppid}/comm") as fh:
                if fh.read().strip() == comm:
                    continue
        except (OSError, ValueError, IndexError):
            continue
        pids.append(int(pid))
    if not pids:
        return None
    out: Json = {"pid": min(pids), "nofile_soft": None, "nofile_hard": None, "shm_mb": None}
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{out['pid']}/limits") as fh:
            for line in fh:
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    out["nofile_soft"] = int(soft) if soft.isdigit() else 1 << 30
                    out["nofile_hard"] = int(hard) if hard.isdigit() else 1 << 30
        with open(f"/proc/{out['pid']}/cmdline", "rb") as fhb:
            args = fhb.read().decode(errors="replace").replace("\0", " ")
            if m := _SHM_ARG.search(args):
                out["shm_mb"] = int(m.group(1))
    return out
