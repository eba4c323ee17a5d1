"""Install phases after OpenSIPS itself: database, firewall outside nftables, logging proof, service."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from sipops.opensips import OpenSIPSLayout
from sipops.provision.osinfo import OsInfo
from sipops.provision.steps import PhasePlan, Step, q

# Schema file -> the table whose presence says the schema is loaded. Created only if absent, never dropped.
SCHEMAS = {"standard": "version", "usrloc": "location", "auth_db": "subscriber"}


@dataclass(frozen=True)
class DbUrl:
    scheme: str  # sqlite | mysql | text | postgres
    path: str = ""  # sqlite file or db_text dir
    host: str = ""
    port: int = 0
    user: str = ""
    password: str = ""
    database: str = ""


def parse_db_url(url: str) -> DbUrl:
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite" or scheme == "text":
        return DbUrl(scheme, path="/" + rest.lstrip("/"))
    parts = urlsplit(url)
    return DbUrl(
        scheme,
        host=parts.hostname or "localhost",
        port=parts.port or (3306 if scheme == "mysql" else 5432),
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=parts.path.lstrip("/"),
    )


def database(layout: OpenSIPSLayout, db: DbUrl, schemas: list[str]) -> PhasePlan:
    """Create the tables the roles use, from the install's own schema files, only where absent."""
    plan = PhasePlan("database")
    if not schemas:
        plan.note = "no role keeps data in a database"
        return plan
    if db.scheme == "sqlite":
        files = {name: f"{layout.share_dir}/sqlite/{name}-create.sql" for name in schemas}
        program = (
            "import json,os,sqlite3,sys\n"
            "db,files=sys.argv[1],json.loads(sys.argv[2])\n"
            "con=sqlite3.connect(db)\n"
            "have={r[0] for r in con.execute(\"select name from sqlite_master where type='table'\")}\n"
            "for table,path in files:\n"
            "    if table not in have:\n"
            "        con.executescript(open(path).read())\n"
            "con.commit()\n"
        )
        pairs = json.dumps([[SCHEMAS[n], f] for n, f in files.items()])
        tables = [SCHEMAS[n] for n in schemas]
        check = (
            "import sqlite3,sys\n"
            "con=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro',uri=True)\n"
            "have={r[0] for r in con.execute(\"select name from sqlite_master where type='table'\")}\n"
            "sys.exit(0 if set(sys.argv[2:])<=have else 1)\n"
        )
        plan.steps.append(
            Step(
                f"sqlite database {db.path}: tables {', '.join(tables)}",
                f"python3 -c {q(program)} {q(db.path)} {q(pairs)} && chown {layout.user}:{layout.group} {q(db.path)}"
                f" && chmod 0640 {q(db.path)}",
                unless=f"python3 -c {q(check)} {q(db.path)} {' '.join(tables)}",
            )
        )
        return plan
    if db.scheme == "mysql":
        # Credentials go through a 0600 defaults file fed on stdin, never argv or the log.
        cnf = f"[client]\nhost={db.host}\nport={db.port}\nuser={db.user}\npassword={db.password}\n"
        opts = 'f=$(mktemp) && chmod 600 "$f" && printf %s ' + q(cnf) + ' > "$f" && '
        done = '; rc=$?; rm -f "$f"; exit $rc'
        plan.steps.append(
            Step(
                f"MySQL database {db.database} on {db.host}",
                opts
                + f'mysql --defaults-extra-file="$f" -e {q(f"CREATE DATABASE IF NOT EXISTS `{db.database}`")}'
                + done,
                unless=opts + f'mysql --defaults-extra-file="$f" -e {q(f"USE `{db.database}`")}' + done,
                secret=True,
            )
        )
        for name in schemas:
            table = SCHEMAS[name]
            path = f"{layout.share_dir}/mysql/{name}-create.sql"
            plan.steps.append(
                Step(
                    f"MySQL table {table}",
                    opts + f'mysql --defaults-extra-file="$f" {q(db.database)} < {path}' + done,
                    unless=opts
                    + f'mysql --defaults-extra-file="$f" -N {q(db.database)} -e '
                    + q(f"SHOW TABLES LIKE '{table}'")
                    + " | grep -qx "
                    + q(table)
                    + done,
                    secret=True,
                )
            )
        return plan
    plan.note = f"{db.scheme} databases are not created by sipops; create them with opensips-cli"
    return plan


def firewall(
    os: OsInfo, backend: str, udp: list[int], tcp: list[int], private_tcp: list[int], allow: list[str]
) -> PhasePlan:
    """Firewall outside our nftables file: enable it at boot (nftables) or firewalld/iptables rules."""
    plan = PhasePlan("firewall")
    if backend == "nftables":
        plan.steps.append(
            Step(
                "sipops firewall loaded at boot",
                "systemctl daemon-reload && systemctl enable --now sipops-firewall.service",
                unless="systemctl is-enabled -q sipops-firewall.service && nft list table inet sipops",
            )
        )
        return plan
    if backend == "firewalld":
        plan.steps.append(
            Step("firewalld running", "systemctl enable --now firewalld", unless="systemctl is-active -q firewalld")
        )
        for proto, ports in (("udp", udp), ("tcp", tcp)):
            for port in ports:
                plan.steps.append(
                    Step(
                        f"firewalld: open {port}/{proto}",
                        # permanent and runtime at once: no reload that would drop other runtime rules
                        f"firewall-cmd --permanent --add-port={port}/{proto} && firewall-cmd --add-port={port}/{proto}",
                        unless=f"firewall-cmd --permanent --query-port={port}/{proto}"
                        f" && firewall-cmd --query-port={port}/{proto}",
                    )
                )
        for port in private_tcp:
            for src in allow:
                fam = "ipv6" if ":" in src else "ipv4"
                rule = f'rule family="{fam}" source address="{src}" port port="{port}" protocol="tcp" accept'
                plan.steps.append(
                    Step(
                        f"firewalld: {port}/tcp from {src}",
                        f"firewall-cmd --permanent --add-rich-rule={q(rule)} && firewall-cmd --add-rich-rule={q(rule)}",
                        unless=f"firewall-cmd --permanent --query-rich-rule={q(rule)}"
                        f" && firewall-cmd --query-rich-rule={q(rule)}",
                    )
                )
        return plan
    # Legacy iptables: one chain of our own, inserted first in INPUT.
    rules = [
        "-N SIPOPS",
        "-F SIPOPS",
        "-A SIPOPS -i lo -j ACCEPT",
        "-A SIPOPS -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
    ]
    rules += [f"-A SIPOPS -s {src} -j ACCEPT" for src in allow if ":" not in src]
    rules += [f"-A SIPOPS -p udp --dport {p} -j ACCEPT" for p in udp]
    rules += [f"-A SIPOPS -p tcp --dport {p} -j ACCEPT" for p in tcp]
    rules += [f"-A SIPOPS -p tcp --dport {p} -j DROP" for p in private_tcp]
    body = " && ".join(f"iptables {r}" for r in rules[1:])
    appended = [r for r in rules if r.startswith("-A ")]
    present = " && ".join(f"iptables -C SIPOPS {r[len('-A SIPOPS ') :]}" for r in appended)
    plan.steps.append(
        Step(
            "iptables chain SIPOPS",
            f"(iptables -N SIPOPS 2>/dev/null || true) && {body} && "
            "(iptables -C INPUT -j SIPOPS 2>/dev/null || iptables -I INPUT 1 -j SIPOPS)",
            # every rule present, none extra, and the chain hooked into INPUT
            unless=f"iptables -C INPUT -j SIPOPS && {present}"
            f" && test \"$(iptables -S SIPOPS | grep -c '^-A SIPOPS ')\" -eq {len(appended)}",
        )
    )
    return plan


def service(layout: OpenSIPSLayout) -> PhasePlan:
    unit = layout.unit
    diagnose = (
        f"echo '--- journalctl -u {unit} (last 30 lines):'; journalctl -u {unit} -n 30 --no-pager;"
        f" echo '--- {layout.bin} -C -f {layout.cfg_file}:'; {layout.bin} -C -f {layout.cfg_file} 2>&1 | tail -n 20;"
        " exit 1"
    )
    return PhasePlan(
        "service",
        steps=[
            Step(
                f"{unit} enabled at boot",
                f"systemctl daemon-reload && systemctl enable {unit}",
                unless=f"systemctl is-enabled -q {unit}",
            ),
            Step(
                f"{unit} running",
                f"systemctl reset-failed {unit} 2>/dev/null; systemctl start {unit} || {{ {diagnose}; }}",
                unless=f"systemctl is-active -q {unit}",
            ),
        ],
    )


def logging_proof(log_file: str, facility: str, marker: str) -> PhasePlan:
    """A line sent with OpenSIPS's syslog identity and facility must arrive in its log file."""
    fac = facility.replace("LOG_", "").lower()
    run = (
        f"logger -p {fac}.notice -t opensips {q(marker)};"
        f" for i in $(seq 1 40); do grep -qF {q(marker)} {q(log_file)} 2>/dev/null && exit 0; sleep 0.25; done;"
        f" echo 'rsyslog did not write the line to {log_file}:'; systemctl status rsyslog --no-pager | tail -n 5;"
        " exit 1"
    )
    return PhasePlan(
        "logging",
        steps=[
            Step(f"OpenSIPS log lines ({facility}) arrive in {log_file}", run, verify=True),
        ],
    )


SYSCTL_FILE = "/etc/sysctl.d/60-sipops.conf"


def limits_check(in_container: bool) -> PhasePlan:
    """Every key of our sysctl file reads back as written; in a container fs.* belong to its host."""
    skip_fs = (
        'case "$k" in fs.*) echo "$k: set it on the container host (read-only here)"; continue;; esac;'
        if in_container
        else ""
    )
    run = (
        "fail=0; while IFS='=' read -r k v; do k=$(echo $k); v=$(echo $v);"
        ' case "$k" in ""|\\#*) continue;; esac; ' + skip_fs + ' cur=$(sysctl -n "$k" 2>/dev/null | tr -s "\\t " "  ");'
        ' if [ "$cur" != "$v" ]; then echo "$k is \'$cur\', want \'$v\'"; fail=1; fi;'
        f" done < {SYSCTL_FILE}; exit $fail"
    )
    return PhasePlan("limits", steps=[Step(f"kernel settings of {SYSCTL_FILE} are live", run, verify=True)])
