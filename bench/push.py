"""bench/push: sipops push vs pyinfra vs Ansible on 10 lab hosts, same files, same handlers.

    python bench/push.py [--lab DIR] [--hosts 10] [--runs 3] [--tools sipops,floor,pyinfra,ansible]

Without --lab an N-host lab (with the OpenSIPS build of $SIPOPS_OPENSIPS_PREFIX or --opensips-prefix
copied in) is brought up and torn down. The "floor" is what any push must do at least: one SSH connection
per host (Fabric, strict host keys, the hosts in parallel) and one sha256sum of the same files, as a whole
process like the others: its figure is set beside sipops' no-op push.
Each tool gets, per run: a first push (hosts reset), an immediate no-op push, and a push after one
variable (sip_fr_timeout) changed every host's opensips.cfg. Medians and ratios are printed.
pyinfra and ansible-core go into their own venv (not project dependencies). Both copy the files
sipops rendered (their template engines would need sipops' context; the work measured - compare,
upload, validate (Ansible only; pyinfra cannot), handlers - is the same). Strict host keys everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SIPOPS = [sys.executable, "-c", "from sipops.cli.main import run; run()"]
PREFIXES = [Path("/opt/opensips-3.6"), Path("/usr/local/opensips")]
# What `sipops install` would have done on these hosts (user, directories, module libraries, curl).
PREP = (
    "getent group opensips >/dev/null || (groupadd -r opensips && useradd -r -g opensips -d /var/lib/opensips "
    "-s /usr/sbin/nologin opensips); mkdir -p /var/lib/opensips && chown opensips:opensips /var/lib/opensips; "
    "chgrp opensips {prefix}/etc/opensips && chmod 0750 {prefix}/etc/opensips; "
    "dpkg -s libmicrohttpd12 libsqlite3-0 curl >/dev/null 2>&1 || "
    "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libmicrohttpd12 libsqlite3-0 curl >/dev/null 2>&1"
)


def sh(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]


class Bench:
    def __init__(self, lab: Path, work: Path, venv: Path) -> None:
        self.lab, self.work, self.venv = lab, work, venv
        data = yaml.safe_load((lab / "inventory.yaml").read_text())
        self.hosts = {n: h["address"] for n, h in data["hosts"].items()}
        self.key, self.known = lab / "ssh" / "id_ed25519", lab / "ssh" / "known_hosts"
        self.prefix = data["defaults"]["vars"].get("opensips_prefix", "/usr")
        data["defaults"]["ssh"].update(key=str(self.key), known_hosts=str(self.known))
        data["defaults"]["vars"].update(watcher=False, health_cron=False, open_files_limit=4096)
        self.inv_data = data
        self.inventory = work / "inventory.yaml"
        self.set_change(5)

    def set_change(self, value: int) -> None:
        self.inv_data["defaults"]["vars"]["sip_fr_timeout"] = value
        self.inventory.write_text(yaml.safe_dump(self.inv_data))

    def ssh(self, addr: str, command: str) -> subprocess.CompletedProcess[str]:
        return sh(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                str(self.key),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={self.known}",
                f"root@{addr}",
                command,
            ]
        )

    def all_hosts(self, command: str) -> None:
        with ThreadPoolExecutor(10) as pool:
            for res in pool.map(lambda a: self.ssh(a, command), self.hosts.values()):
                if res.returncode:
                    raise SystemExit(f"host command failed: {command}: {res.stderr}")

    def render(self) -> dict[str, object]:
        """Files and handlers per host, as sipops renders them (for pyinfra's and Ansible's inputs)."""
        from sipops.inventory import load_inventory
        from sipops.render import render_host

        inv = load_inventory(self.inventory)
        out = self.work / "rendered"
        spec: dict[str, object] = {}
        for h in inv.hosts.values():
            r = render_host(inv, h)
            files = []
            for f in r.files:
                p = out / h.name / f.dest.lstrip("/")
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(f.content)
                files.append(
                    {
                        "dest": f.dest,
                        "src": str(p),
                        "mode": f.mode,
                        "owner": f.owner,
                        "group": f.group,
                        "validate": f.validate,
                        "notify": list(f.notify),
                    }
                )
            spec[h.name] = {"files": files, "handlers": r.handlers}
        return spec

    def reset(self) -> None:
        spec = self.render()
        paths = sorted({f["dest"] for s in spec.values() for f in s["files"]})  # type: ignore[attr-defined]
        self.all_hosts(
            "systemctl stop opensips 2>/dev/null; rm -rf /var/lib/sipops "
            + " ".join(paths)
            + "; systemctl daemon-reload"
        )

    # ---- the tools ----
    def run_floor(self) -> float:
        spec = self.render()
        paths = {n: [f["dest"] for f in s["files"]] for n, s in spec.items()}  # type: ignore[index]
        job = {"hosts": self.hosts, "paths": paths, "key": str(self.key), "known": str(self.known)}
        t = time.monotonic()
        res = sh([sys.executable, "-c", FLOOR, json.dumps(job)])
        took = time.monotonic() - t
        if res.returncode:
            raise SystemExit(f"floor failed:\n{res.stdout}{res.stderr}")
        return took

    def run_sipops(self) -> float:
        t = time.monotonic()
        res = sh([*SIPOPS, "push", "all", "-i", str(self.inventory)], cwd=self.work)
        took = time.monotonic() - t
        if res.returncode:
            raise SystemExit(f"sipops push failed:\n{res.stdout}{res.stderr}")
        return took

    def run_pyinfra(self) -> float:
        spec = self.render()
        (self.work / "spec.json").write_text(json.dumps(spec))
        hosts = [
            (
                a,
                {
                    "ssh_user": "root",
                    "ssh_key": str(self.key),
                    "ssh_known_hosts_file": str(self.known),
                    "ssh_strict_host_key_checking": "yes",
                    "sipops_name": n,
                },
            )
            for n, a in self.hosts.items()
        ]
        (self.work / "pyinfra_inventory.py").write_text(f"hosts = {hosts!r}\n")
        (self.work / "deploy.py").write_text(PYINFRA_DEPLOY.replace("SPEC", str(self.work / "spec.json")))
        argv = [str(self.venv / "bin" / "pyinfra"), "-y", "--parallel", "10", "pyinfra_inventory.py", "deploy.py"]
        t = time.monotonic()
        res = sh(argv, cwd=self.work)
        took = time.monotonic() - t
        if res.returncode:
            raise SystemExit(f"pyinfra failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
        return took

    def run_ansible(self) -> float:
        spec = self.render()
        lines = ["[lab]"] + [
            f"{n} ansible_host={a} sipops_spec={self.work}/spec-{n}.json" for n, a in self.hosts.items()
        ]
        for n, s in spec.items():
            (self.work / f"spec-{n}.json").write_text(json.dumps(s))
        (self.work / "hosts.ini").write_text("\n".join(lines) + "\n")
        ssh_args = f"-o UserKnownHostsFile={self.known} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
        (self.work / "ansible.cfg").write_text(
            f"[defaults]\nforks = 10\nhost_key_checking = True\ninterpreter_python = /usr/bin/python3\n"
            f"remote_user = root\nprivate_key_file = {self.key}\nstdout_callback = default\n"
            f"[ssh_connection]\npipelining = True\nssh_args = {ssh_args}\n"
        )
        handlers = next(iter(spec.values()))["handlers"]  # type: ignore[index]
        for s in spec.values():
            handlers.update(s["handlers"])  # type: ignore[index]
        (self.work / "site.yml").write_text(ansible_playbook(handlers))  # type: ignore[arg-type]
        argv = [str(self.venv / "bin" / "ansible-playbook"), "-i", "hosts.ini", "site.yml"]
        t = time.monotonic()
        res = sh(
            argv,
            cwd=self.work,
            env={"PATH": f"{self.venv}/bin:/usr/bin:/bin", "ANSIBLE_CONFIG": "ansible.cfg", "HOME": str(self.work)},
        )
        took = time.monotonic() - t
        if res.returncode:
            raise SystemExit(f"ansible failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
        return took


FLOOR = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
import paramiko
from fabric import Connection
job = json.loads(sys.argv[1])
def one(item):
    name, address = item
    c = Connection(address, user="root", connect_kwargs={"key_filename": job["key"], "look_for_keys": False})
    c.client.load_host_keys(job["known"])
    c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        return c.run("sha256sum " + " ".join(job["paths"][name]), hide=True, warn=True).return_code
    finally:
        c.close()
with ThreadPoolExecutor(len(job["hosts"])) as pool:
    codes = list(pool.map(one, job["hosts"].items()))
sys.exit(0 if all(c in (0, 1) for c in codes) else 1)
"""

PYINFRA_DEPLOY = """
import json
from pyinfra import host
from pyinfra.operations import files, server
from pyinfra.operations.util import any_changed

spec = json.load(open("SPEC"))[host.data.sipops_name]
notified = {}
for f in spec["files"]:
    op = files.put(name=f["dest"], src=f["src"], dest=f["dest"], mode=f["mode"], user=f["owner"],
                   group=f["group"], create_remote_dir=True)
    for h in f["notify"]:
        notified.setdefault(h, []).append(op)
order = sorted(notified, key=lambda n: 0 if "daemon-reload" in spec["handlers"][n] else 1)
for h in order:
    server.shell(name=h, commands=[spec["handlers"][h]], _if=any_changed(*notified[h]))
"""


def ansible_playbook(handlers: dict[str, str]) -> str:
    tasks = [
        {
            "name": "load the rendered file list",
            "ansible.builtin.set_fact": {"spec": "{{ lookup('file', sipops_spec) | from_json }}"},
        },
        {
            "name": "managed files (validated on the host)",
            "ansible.builtin.copy": {
                "src": "{{ item.src }}",
                "dest": "{{ item.dest }}",
                "mode": "{{ item.mode }}",
                "owner": "{{ item.owner }}",
                "group": "{{ item.group }}",
                "validate": "{{ item.validate | replace('{path}', '%s') if item.validate else omit }}",
            },
            "loop": "{{ spec.files }}",
            "loop_control": {"label": "{{ item.dest }}"},
            "register": "copied",
        },
    ]
    # notify cannot come from loop data: one flag task per handler, from what the loop changed
    hs = []
    order = sorted(handlers, key=lambda n: 0 if "daemon-reload" in handlers[n] else 1)
    for name in order:
        tasks.append(
            {
                "name": f"notify {name}",
                "ansible.builtin.debug": {"msg": "changed"},
                "changed_when": True,
                "when": f"copied.results | selectattr('changed') | map(attribute='item.notify') | flatten "
                f"| select('equalto', {name!r}) | list | length > 0",
                "notify": name,
            }
        )
        hs.append({"name": name, "ansible.builtin.shell": handlers[name]})
    play = [{"hosts": "lab", "gather_facts": False, "tasks": tasks, "handlers": hs}]
    return yaml.safe_dump(play, sort_keys=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lab", type=Path, help="a running lab's folder (default: bring one up with 10 hosts)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--venv", type=Path, default=Path("/tmp/sipops-bench-venv"))
    ap.add_argument("--tools", default="sipops,floor,pyinfra,ansible")
    ap.add_argument("--hosts", type=int, default=10, help="lab hosts (without --lab)")
    ap.add_argument("--opensips-prefix", type=Path, help="OpenSIPS build to copy in [default: $SIPOPS_OPENSIPS_PREFIX]")
    args = ap.parse_args()
    if not (args.venv / "bin" / "pyinfra").exists() or not (args.venv / "bin" / "ansible-playbook").exists():
        sh([sys.executable, "-m", "venv", str(args.venv)])
        pip = sh([str(args.venv / "bin" / "pip"), "install", "-q", "pyinfra", "ansible-core"])
        if pip.returncode:
            raise SystemExit(f"could not install pyinfra/ansible-core: {pip.stderr[-2000:]}")
    work = Path(tempfile.mkdtemp(prefix="sipops-bench-push-"))
    lab, own_lab = args.lab, args.lab is None
    if own_lab:
        from sipops.lab.lifecycle import UpOptions, up

        env_prefixes = [Path(p) for p in os.environ.get("SIPOPS_OPENSIPS_PREFIX", "").split(":") if p]
        candidates = [args.opensips_prefix] if args.opensips_prefix else [*env_prefixes, *PREFIXES]
        prefix = next((p for p in candidates if (p / "sbin" / "opensips").exists()), None)
        if prefix is None:
            raise SystemExit("bench/push needs an OpenSIPS build to copy into the lab (.ci/opensips TARBALL)")
        lab = work / "lab"
        network = IPv4Network("198.18.144.0/20")  # no test lab uses it
        opts = UpOptions(hosts=args.hosts, prefix="sipb", network=network, opensips_prefix=prefix)
        up(lab, opts, log=lambda line: print(line, file=sys.stderr))
    try:
        bench = Bench(lab.resolve(), work, args.venv)
        bench.all_hosts(PREP.format(prefix=bench.prefix))
        tools = args.tools.split(",")
        times: dict[tuple[str, str], list[float]] = {}
        for run in range(args.runs):
            for tool in tools:
                fn = getattr(bench, f"run_{tool}")
                if tool == "floor":  # nothing to push: its one figure stands beside every no-op
                    times.setdefault((tool, "no-op"), []).append(fn())
                    continue
                bench.set_change(5)
                bench.reset()
                first = fn()
                noop = fn()
                bench.set_change(6 + run)
                change = fn()
                for k, v in (("first", first), ("no-op", noop), ("one change", change)):
                    times.setdefault((tool, k), []).append(v)
                print(f"run {run + 1} {tool:8} first {first:6.2f}s  no-op {noop:6.2f}s  one change {change:6.2f}s")
        print(f"\nmedians over {args.runs} runs, {len(bench.hosts)} hosts:")
        print(f"{'':12}" + "".join(f"{t:>10}" for t in tools) + "   sipops/floor sipops/pyinfra  sipops/ansible")
        for k in ("first", "no-op", "one change"):
            med = {t: statistics.median(times[(t, k)]) for t in tools if (t, k) in times}
            row = f"{k:12}" + "".join(f"{med[t]:9.2f}s" if t in med else f"{'-':>10}" for t in tools)
            if "sipops" in med:
                for ref in ("floor", "pyinfra", "ansible"):
                    row += f"   {med['sipops'] / med[ref]:12.2f}x" if ref in med else f"{'-':>15}"
            print(row)
    finally:
        if own_lab:
            from sipops.lab.lifecycle import down

            down(lab, log=lambda _: None)


if __name__ == "__main__":
    main()
