"""Shared by the tune-tcp e2e tests and bench/tune: a stand-in TCP accept loop for the lab hosts and a
client that opens N concurrent connections from an attacker namespace and counts those held.

Both are plain python3 sources (run with `python3 -c`), bounded in count and time.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
from collections.abc import Callable, Sequence

STANDIN_UNIT = "opensips-standin.service"
STANDIN_DIR = "/usr/local/lib/sipops-standin"

# The stand-in for OpenSIPS: accepts, greets each connection with one byte and holds it. At the
# descriptor limit accept() fails with EMFILE and the rest wait in the queue, ungreeted, as they would
# at OpenSIPS's "Too many open files".
STANDIN = r"""
import errno, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(65535)
held = []
while True:
    try:
        c, _ = s.accept()
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            time.sleep(0.05)
            continue
        raise
    try:
        c.send(b"+")
        held.append(c)
    except OSError:
        c.close()
"""

# The client: N non-blocking connects to HOST:PORT, then
#   mode "greet": a connection is held once the server's greeting byte arrives;
#   mode "hold":  a connection is held when, WAIT seconds later, it is established and still open.
# Stops when every connection is decided, after QUIET seconds without news, or after WAIT seconds.
CLIENT = r"""
import json, resource, selectors, socket, sys, time
host, port, count, mode, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
quiet = 3.0
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
need = count + 64
if soft < need:
    resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard))
sel = selectors.DefaultSelector()
socks, failed = [], 0
for _ in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    if s.connect_ex((host, port)) not in (0, 115):  # 115: EINPROGRESS
        failed += 1
        s.close()
        continue
    socks.append(s)
    if mode == "greet":
        sel.register(s, selectors.EVENT_READ)
held = closed = 0
start = last = time.monotonic()
if mode == "greet":
    while held + closed < len(socks) and time.monotonic() - start < wait:
        events = sel.select(0.2)
        for key, _ in events:
            sel.unregister(key.fileobj)
            try:
                data = key.fileobj.recv(1)
            except OSError:
                data = b""
            if data:
                held += 1
            else:
                closed += 1
        if events:
            last = time.monotonic()
        elif time.monotonic() - last > quiet:
            break
else:
    time.sleep(wait)
    for s in socks:
        try:
            s.getpeername()
            data = s.recv(1, socket.MSG_PEEK)
            closed += 1 if data == b"" else 0
            held += 1 if data else 0
        except BlockingIOError:
            held += 1
        except OSError:
            pass
print(json.dumps({"held": held, "closed": closed, "pending": len(socks) - held - closed, "failed": failed}))
for s in socks:
    s.close()
"""

Exec = Callable[..., "subprocess.CompletedProcess[str]"]


def standin_script(port: int) -> str:
    """Shell that installs and starts the stand-in unit; its limits come from the opensips drop-in itself."""
    unit = (
        "[Unit]\n"
        "Description=Stand-in for OpenSIPS (sipops tests): a python3 TCP accept loop with the opensips unit's limits\n"
        "[Service]\n"
        f"ExecStart=/usr/bin/python3 {STANDIN_DIR}/accept.py {port}\n"
    )
    # The opensips drop-in (LimitNOFILE, and an ExecStart for OpenSIPS) is linked in; zz-standin.conf,
    # read after it, puts the stand-in's own command back.
    reset = f"[Service]\nExecStart=\nExecStart=/usr/bin/python3 {STANDIN_DIR}/accept.py {port}\n"
    d = f"/etc/systemd/system/{STANDIN_UNIT}.d"
    return " && ".join(
        [
            f"mkdir -p {STANDIN_DIR} {d}",
            f"printf %s {shlex.quote(STANDIN)} > {STANDIN_DIR}/accept.py",
            f"printf %s {shlex.quote(unit)} > /etc/systemd/system/{STANDIN_UNIT}",
            f"ln -sfn /etc/systemd/system/opensips.service.d/sipops.conf {d}/sipops.conf",
            f"printf %s {shlex.quote(reset)} > {d}/zz-standin.conf",
            "systemctl daemon-reload",
            f"systemctl restart {STANDIN_UNIT}",
        ]
    )


def standin_remove_script() -> str:
    d = f"/etc/systemd/system/{STANDIN_UNIT}.d"
    return (
        f"systemctl stop {STANDIN_UNIT}; rm -rf {d} /etc/systemd/system/{STANDIN_UNIT} {STANDIN_DIR}; "
        "systemctl daemon-reload; true"
    )


def hold(
    run: Exec, attackers: Sequence[str], address: str, port: int, total: int, mode: str = "greet", wait: float = 25
) -> dict[str, int]:
    """Open `total` connections to address:port spread over the attackers at once; summed counts."""
    share = [total // len(attackers) + (1 if i < total % len(attackers) else 0) for i in range(len(attackers))]
    results: list[dict[str, int]] = [{} for _ in attackers]
    errors: list[str] = []

    def one(i: int) -> None:
        res = run(attackers[i], "python3", "-c", CLIENT, address, str(port), str(share[i]), mode, str(wait))
        try:
            results[i] = json.loads(res.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            errors.append(f"{attackers[i]}: exit {res.returncode}: {res.stderr.strip()[-500:]}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(attackers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    return {k: sum(r.get(k, 0) for r in results) for k in ("held", "closed", "pending", "failed")}
