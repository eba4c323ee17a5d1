"""The sipops agent: runs ON a managed host under python3 (stdlib only), one process per phase.

Shipped by sipops.remote.runner.call() on stdin with a JSON request (and, for apply, the new files'
bytes), so every phase is one SSH round trip. sipops/host/sip.py is prepended for the SIP OPTIONS probe.

Apply is safe under a dropped connection, Ctrl-C or kill -9 of the controller: the files are read
in full and checked before anything else happens; the work on live files then runs in a child in
its own session (setsid) with stdio off the SSH channel, holding the per-host lock, and writes
result.json that the controller reads (or polls after reconnecting). Each file is written beside
its destination (dest.sipops-new, fsynced) and renamed into place, so it is always old or new.
"""

from __future__ import annotations

import grp
import os
import pwd
import time

# Each phase is a fresh python3 on the host, and a no-op push is one facts run per host: only what
# facts needs is imported here; json, shutil, subprocess (and re with them) load where they are used.
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy reads it as True
if TYPE_CHECKING:
    import subprocess
    from typing import IO, Any

    Json = dict[str, Any]

# sha256 from CPython's built-in module (_sha2 since 3.12, _sha256 before): hashlib would load
# OpenSSL's libcrypto on every run, a third of a facts run's CPU; the files hashed here are small.
try:
    from _sha2 import sha256 as _sha256  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    try:
        from _sha256 import sha256 as _sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        from hashlib import sha256 as _sha256  # type: ignore[assignment,no-redef,unused-ignore]

STATE = "/var/lib/sipops"
NEW = ".sipops-new"
SBIN = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin"]


def main(req: Json, stream: IO[bytes], size: int) -> Json:
    """Entry point (sipops.remote.runner.call): the reply is printed by the boot (sipops.remote.ship)."""
    op = req["op"]
    if op == "facts":
        out = facts(req)
    elif op == "apply":
        out = apply(req, stream, size)
    elif op == "wait":
        out = wait(req)
    elif op == "backups":
        out = {"ok": True, "backups": list_backups(req)}
    elif op == "place":
        out = place(req, stream)
    else:
        out = {"ok": False, "error": f"unknown op {op}"}
    return out


def _root(req: Json) -> str:
    return str(req.get("root") or "")


def state_dir(req: Json) -> str:
    return _root(req) + STATE


def sha256(path: str) -> str:
    h = _sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return str(h.hexdigest())


def _name(fn: Any, ident: int) -> str:
    try:
        return str(fn(ident)[0])
    except KeyError:
        return str(ident)


def file_state(path: str, content: bool = False) -> Json | None:
    """sha256, mode, owner, group of a file (following symlinks); None when absent."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not os.path.isfile(path):
        return {"type": "not a regular file"}
    out: Json = {
        "sha256": sha256(path),
        "mode": f"{st.st_mode & 0o7777:04o}",
        "owner": _name(pwd.getpwuid, st.st_uid),
        "group": _name(grp.getgrgid, st.st_gid),
        "size": st.st_size,
    }
    if content:
        with open(path, "rb") as f:
            out["content"] = f.read(1 << 20).hex()
    return out


def which(cmd: str) -> str | None:
    if cmd.startswith("/"):
        return cmd if os.access(cmd, os.X_OK) else None
    for d in os.environ.get("PATH", "").split(":") + SBIN:
        full = os.path.join(d or ".", cmd)
        if os.access(full, os.X_OK) and os.path.isfile(full):
            return full
    return None


def _run(argv: list[str], timeout: float = 10) -> tuple[int, str]:
    import subprocess

    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return p.returncode, p.stdout.decode(errors="replace")


def _start(argv: list[str]) -> subprocess.Popen[bytes] | None:
    import subprocess

    try:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError:
        return None


def _collect(proc: subprocess.Popen[bytes] | None) -> tuple[int, str]:
    import subprocess

    if proc is None:
        return 127, ""
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return 124, ""
    return proc.returncode, out.decode(errors="replace")


def facts(req: Json) -> Json:
    root = _root(req)
    # The two subprocesses run while the files are hashed.
    binary = which(req.get("opensips_bin") or "opensips") or which("opensips")
    cached = _version_cache(req, binary)
    version = _start([binary, "-V"]) if binary and cached is None else None
    files: Json = {}
    same = True
    for f in req.get("files", []):
        st = file_state(root + f["path"])
        if st and f.get("content") and st.get("sha256") != f.get("want_sha256"):
            st = file_state(root + f["path"], content=True)
        files[f["path"]] = st
        if f.get("retired"):  # wanted absent
            same = same and st is None
            continue
        want = f.get("want")
        same = (
            same
            and st is not None
            and st.get("sha256") == f.get("want_sha256")
            and [st.get("mode"), st.get("owner"), st.get("group")] == want
        )
    # The units' state matters only to the handlers a change triggers: when every file is as wanted
    # (a no-op push), systemctl is not run at all.
    show = None
    if os.path.isdir("/run/systemd/system") and req.get("units") and not same:
        show = _start(["systemctl", "show", "-p", "Id,LoadState,ActiveState", "--", *req["units"]])
    osr: dict[str, str] = {}
    try:
        with open(root + "/etc/os-release") as f:
            for line in f:
                k, sep, v = line.strip().partition("=")
                if sep:
                    osr[k] = v.strip('"')
    except OSError:
        pass
    sysctl: Json = {}
    for key in req.get("sysctl", []):
        try:
            with open("/proc/sys/" + key.replace(".", "/")) as fh:
                sysctl[key] = " ".join(fh.read().split())
        except OSError:
            sysctl[key] = None
    commands = {c: which(c) for c in req.get("commands", [])}
    systemd = os.path.isdir("/run/systemd/system")
    units: Json = {}
    if show is not None:
        _, text = _collect(show)
        blocks = text.strip().split("\n\n")
        for i, unit in enumerate(req["units"]):
            kv = dict(line.partition("=")[::2] for line in (blocks[i] if i < len(blocks) else "").splitlines())
            units[unit] = {"load": kv.get("LoadState", ""), "active": kv.get("ActiveState", "")}
    opensips: Json | None = None
    if binary:
        ver = cached
        if ver is None:
            text = _collect(version)[1]
            ver = text.split("\n")[0].split(" ")[2] if text.startswith("version:") else ""
            _version_cache(req, binary, ver)
        opensips = {"bin": binary, "version": ver, "prefix": os.path.dirname(os.path.dirname(binary))}
    users = {u: _exists(pwd.getpwnam, u) for u in req.get("users", [])}
    groups = {g: _exists(grp.getgrnam, g) for g in req.get("groups", [])}
    missing = [a for a in req.get("listen", []) if not _is_local(a)]
    return {
        "mi": mi_query(req["mi"]["url"], req["mi"]["method"]) if req.get("mi") else None,
        "listen_missing": missing,
        "addresses": host_addresses() if missing else [],
        "ok": True,
        "os": osr,
        "init": "systemd" if systemd else ("sysvinit" if os.path.isdir("/etc/init.d") else "unknown"),
        "files": files,
        "sysctl": sysctl,
        "nofile": _nofile(),
        "commands": commands,
        "opensips": opensips,
        "units": units,
        "users": users,
        "groups": groups,
        "uid": os.geteuid(),
    }


def mi_query(url: str, method: str) -> Json:
    """One MI command over mi_http: {"result": ...} or {"error": "..."} (never raises)."""
    import json
    import urllib.request

    body = json.dumps({"jsonrpc": "2.0", "method": method, "id": 1}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=3) as reply:
            data = json.loads(reply.read().decode("utf-8", "replace"))
    except (OSError, ValueError) as exc:
        return {"error": f"{url}: {exc}"}
    if not isinstance(data, dict) or "result" not in data:
        error = data.get("error") if isinstance(data, dict) else None
        return {"error": f"{method}: {error.get('message') if isinstance(error, dict) else 'no result'}"}
    return {"result": data["result"]}


def _is_local(address: str) -> bool:
    """The host can bind this address (what OpenSIPS does at start, and `-C` does not check)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, 0))
        except OSError as exc:
            return exc.errno != errno.EADDRNOTAVAIL
    return True


def host_addresses() -> list[str]:
    """The host's own addresses (IPv4 from the kernel's local routes, IPv6 from if_inet6)."""
    out: list[str] = []
    try:
        with open("/proc/net/fib_trie") as f:
            last = ""
            for line in f:
                word = line.strip()
                if word.startswith("|-- "):
                    last = word[4:]
                elif word == "/32 host LOCAL" and last and last not in out:
                    out.append(last)
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                raw = line.split()[0]
                groups = [raw[i : i + 4].lstrip("0") or "0" for i in range(0, 32, 4)]
                text = ":".join(groups)
                out.append(text if len(raw) == 32 else raw)
    except OSError:
        pass
    return out


def cfg_sockets(text: str) -> list[Json]:
    """The SIP sockets an opensips.cfg opens: `socket=` (`listen=` before 3.1) lines, proto:address[:port]."""
    out: list[Json] = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or key.strip() not in ("socket", "listen"):
            continue
        words = value.split("#", 1)[0].split()
        if not words:
            continue
        proto, _, rest = words[0].partition(":")
        if rest.startswith("["):
            address, _, port = rest[1:].partition("]")
            port = port.lstrip(":")
        else:
            address, _, port = rest.partition(":")
        if address:
            out.append({"proto": proto, "address": address, "port": int(port) if port.isdigit() else 5060})
    return out


def _version_cache(req: Json, binary: str | None, version: str | None = None) -> str | None:
    """`opensips -V` costs more than the rest of the facts: remembered per binary (path, size, mtime)."""
    if not binary:
        return None
    st = os.stat(binary)
    key = f"{binary}:{st.st_size}:{st.st_mtime_ns}"
    path = state_dir(req) + "/opensips-version"
    if version is None:
        try:
            with open(path) as fh:
                k, _, v = fh.read().partition("\n")
            return v.strip() if k == key and v.strip() else None
        except OSError:
            return None
    try:
        os.makedirs(state_dir(req), mode=0o700, exist_ok=True)
        with open(path, "w") as fh:
            fh.write(f"{key}\n{version}\n")
    except OSError:
        pass
    return version


def _exists(fn: Any, name: str) -> bool:
    try:
        fn(name)
        return True
    except KeyError:
        return False


def _nofile() -> int | None:
    """Open-files limit of the running OpenSIPS (its main process), if any."""
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "opensips":
                    continue
            with open(f"/proc/{pid}/limits") as f:
                for line in f:
                    if line.startswith("Max open files"):
                        return int(line.split()[3])
        except (OSError, ValueError, IndexError):
            continue
    return None


# ---- apply ---------------------------------------------------------------------------------


def lock(req: Json) -> tuple[int | None, str]:
    """flock the host's lock file, waiting up to lock_timeout; (fd, '') or (None, who holds it)."""
    import fcntl

    os.makedirs(state_dir(req), mode=0o700, exist_ok=True)
    fd = os.open(state_dir(req) + "/lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + float(req.get("lock_timeout", 60))
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} stamp {req.get('stamp')} since {time.strftime('%H:%M:%S')}".encode(), 0)
            return fd, ""
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 200, 0).decode(errors="replace")
                os.close(fd)
                return None, holder or "another sipops process"
            time.sleep(0.1)


def apply(req: Json, stream: IO[bytes], size: int) -> Json:
    import json
    import shutil
    import signal

    stamp = req["stamp"]
    staging = f"{state_dir(req)}/staging/{stamp}"
    os.makedirs(staging, mode=0o700, exist_ok=True)
    for f in req["files"]:
        if f.get("delete") or "sha256" not in f:
            continue
        dest = staging + f["path"]
        os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
        if f.get("source"):  # rollback: the content is a backup already on the host
            shutil.copyfile(f["source"], dest)
            continue
        h = _sha256()
        left = int(f["size"])
        with open(dest, "wb") as fh:
            while left:
                block = stream.read(min(left, 1 << 20))
                if not block:
                    break
                h.update(block)
                fh.write(block)
                left -= len(block)
        if left or h.hexdigest() != f["sha256"]:
            shutil.rmtree(staging, ignore_errors=True)
            return {"ok": False, "phase": "transfer", "error": f"transfer cut short at {f['path']}; nothing changed"}
    fd, holder = lock(req)
    if fd is None:
        shutil.rmtree(staging, ignore_errors=True)
        return {"ok": False, "phase": "lock", "error": f"host is locked by {holder} (waited {req['lock_timeout']}s)"}
    with open(staging + "/request.json", "w") as fh:
        json.dump(req, fh)
    result = f"{state_dir(req)}/results/{stamp}.json"
    pid = os.fork()
    if pid == 0:  # the child: survives the SSH channel closing
        try:
            os.setsid()
            for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
            null = os.open(os.devnull, os.O_RDWR)
            log = os.open(staging + "/log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            try:
                out = run_apply(req, staging)
            except Exception as exc:  # report, never leave the controller guessing
                out = {"ok": False, "phase": "agent", "error": f"{type(exc).__name__}: {exc}"}
            write_json(result, out)
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            os._exit(0)
    os.close(fd)  # the child holds the lock (same open file) until it exits
    os.waitpid(pid, 0)
    return read_result(result)


def read_result(path: str) -> Json:
    import json

    try:
        with open(path) as fh:
            out: Json = json.load(fh)
            return out
    except (OSError, ValueError) as exc:
        return {"ok": False, "phase": "agent", "error": f"no result ({exc})"}


def wait(req: Json) -> Json:
    """After a dropped connection: wait for that apply's result (its child still holds the lock)."""
    path = f"{state_dir(req)}/results/{req['stamp']}.json"
    deadline = time.monotonic() + float(req.get("timeout", 300))
    while not os.path.exists(path) and time.monotonic() < deadline:
        if not os.path.isdir(f"{state_dir(req)}/staging/{req['stamp']}"):
            break  # never got past the transfer: nothing was changed
        time.sleep(0.2)
    if os.path.exists(path):
        return read_result(path)
    return {"ok": False, "phase": "transfer", "error": "the apply never started on the host; nothing changed"}


def write_json(path: str, data: Json) -> None:
    import json

    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path + NEW, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(path + NEW, path)


def _ids(f: Json) -> tuple[int, int]:
    return pwd.getpwnam(f["owner"]).pw_uid, grp.getgrnam(f["group"]).gr_gid


def needs_change(f: Json, live: str) -> bool:
    cur = file_state(live)
    if f.get("delete"):
        return cur is not None
    if cur is None or "sha256" not in cur:
        return True
    want = (f["sha256"], f["mode"], f["owner"], f["group"])
    return want != (cur["sha256"], cur["mode"], cur["owner"], cur["group"])


def run_apply(req: Json, staging: str) -> Json:
    root = _root(req)
    stamp = req["stamp"]
    t0 = time.monotonic()
    for f in req["files"]:  # leftovers of an apply killed between write and rename
        if os.path.exists(root + f["path"] + NEW):
            os.unlink(root + f["path"] + NEW)
    # Decided again under the lock: a concurrent push may have done part of the work already.
    changes = [f for f in req["files"] if needs_change(f, root + f["path"])]
    out: Json = {"ok": True, "stamp": stamp, "changed": [f["path"] for f in changes], "handlers": [], "gate": []}
    forced = set(req.get("force_handlers", []))  # the files are right, what runs is not
    if not changes and not forced:
        return out
    wanted = {n for f in changes for n in f.get("notify", [])} | forced
    handlers = [h for h in req["handlers"] if h["name"] in wanted]
    env = dict(os.environ, SIPOPS_ROOT=root, PATH=os.environ.get("PATH", "") + ":" + ":".join(SBIN))
    for f in changes:
        if f.get("delete") or "sha256" not in f:
            continue
        staged = staging + f["path"]
        uid, gid = _ids(f)
        os.chown(staged, uid, gid)
        os.chmod(staged, int(f["mode"], 8))
        if f.get("validate") and req.get("validate", True):
            cmd = f["validate"].replace("{path}", _quote(staged))
            t = time.monotonic()
            rc, text = _sh(cmd, env, 120)
            out.setdefault("validated", []).append({"path": f["path"], "seconds": round(time.monotonic() - t, 3)})
            if rc != 0:
                out.update(ok=False, phase="validate", file=f["path"], error=f"validator failed ({rc}): {cmd}")
                out.update(output=text[-4000:], changed=[])
                return out
    manifest = backup(req, changes, handlers) if changes else None  # handlers alone: nothing to back up
    out["backup"] = stamp if changes else None
    for f in changes:  # a retired file's own last step (stop and disable its service) before it goes
        if f.get("delete") and f.get("retire"):
            rc, text = _sh(f["retire"], env, 120)
            out.setdefault("retired", []).append({"path": f["path"], "rc": rc, "output": text[-2000:]})
            if rc != 0:
                out.update(
                    ok=False, phase="retire", file=f["path"], error=f"retire command failed ({rc}): {f['retire']}"
                )
                out.update(output=text[-4000:], changed=[])
                return out
    install(root, changes, staging, {f["path"]: _ids(f) for f in changes if not f.get("delete")})
    out["handlers"] = ran = run_handlers(handlers, env)
    failed = next((h for h in ran if h["rc"] != 0), None)
    gate = req.get("gate") or {}
    if failed is None:
        t = time.monotonic()
        out["gate"] = checks = health_gate(gate, handlers, float(gate.get("timeout", 20)), root)
        out["gate_seconds"] = round(time.monotonic() - t, 3)
        bad = [c for c in checks if not c["ok"]]
    if failed is not None or bad:
        out.update(ok=False, phase="handler" if failed else "gate")
        out["error"] = f"handler '{failed['name']}' failed" if failed else "health gate: " + bad[0]["what"]
        out["logs"] = logs(gate, handlers)
        if manifest is not None:
            restore(root, manifest)
        out["rollback_handlers"] = run_handlers(handlers, env)
        # The restored files are live now: the gate probes the sockets of the restored cfg.
        out["rollback_gate"] = health_gate(gate, handlers, float(gate.get("timeout", 20)), root)
        out["rolled_back"] = True
    prune(req)
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def _sh(cmd: str, env: dict[str, str], timeout: float) -> tuple[int, str]:
    import subprocess

    try:
        p = subprocess.run(
            ["sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f}s"
    return p.returncode, p.stdout.decode(errors="replace")


def backup(req: Json, changes: list[Json], handlers: list[Json]) -> Json:
    """Copy the live versions to backups/<stamp>/ and write the manifest before anything is replaced."""
    import shutil

    root, stamp = _root(req), req["stamp"]
    bdir = f"{state_dir(req)}/backups/{stamp}"
    entries = []
    for f in changes:
        live = root + f["path"]
        cur = file_state(live)
        entry: Json = {"path": f["path"], "existed": cur is not None and "sha256" in cur}
        if entry["existed"] and cur is not None:
            copy = bdir + "/files" + f["path"]
            os.makedirs(os.path.dirname(copy), mode=0o700, exist_ok=True)
            shutil.copyfile(live, copy)
            entry.update(cur, copy=copy)
        entries.append(entry)
    manifest = {
        "stamp": stamp,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "kind": req.get("kind", "push"),
        "files": entries,
        "handlers": handlers,
        "gate": req.get("gate") or {},
    }
    write_json(bdir + "/manifest.json", manifest)
    return manifest


def install(root: str, changes: list[Json], staging: str, ids: dict[str, tuple[int, int]]) -> None:
    """Every new file fsynced beside its destination first, then the renames back to back."""
    for f in changes:
        if f.get("delete"):
            continue
        live = root + f["path"]
        parent = os.path.dirname(live)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        _write_new(staging + f["path"], live + NEW, int(f["mode"], 8), *ids[f["path"]])
    for f in changes:
        live = root + f["path"]
        if f.get("delete"):
            if os.path.lexists(live):
                os.unlink(live)
        else:
            os.replace(live + NEW, live)
        _fsync_dir(os.path.dirname(live))


def _write_new(src: str, tmp: str, mode: int, uid: int, gid: int) -> None:
    import shutil

    with open(src, "rb") as i, open(tmp, "wb") as o:
        shutil.copyfileobj(i, o)
        o.flush()
        os.fchown(o.fileno(), uid, gid)
        os.fchmod(o.fileno(), mode)
        os.fsync(o.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore(root: str, manifest: Json) -> None:
    for e in manifest["files"]:
        live = root + e["path"]
        if e["existed"]:
            uid = pwd.getpwnam(e["owner"]).pw_uid if not e["owner"].isdigit() else int(e["owner"])
            gid = grp.getgrnam(e["group"]).gr_gid if not e["group"].isdigit() else int(e["group"])
            _write_new(e["copy"], live + NEW, int(e["mode"], 8), uid, gid)
            os.replace(live + NEW, live)
        elif os.path.lexists(live):
            os.unlink(live)
        _fsync_dir(os.path.dirname(live))


def run_handlers(handlers: list[Json], env: dict[str, str]) -> list[Json]:
    ran = []
    for h in handlers:
        t = time.monotonic()
        rc, text = _sh(h["cmd"], env, 180)
        ran.append({"name": h["name"], "rc": rc, "output": text[-2000:], "seconds": round(time.monotonic() - t, 3)})
        if rc != 0:
            break
    return ran


def health_gate(gate: Json, handlers: list[Json], timeout: float, root: str = "") -> list[Json]:
    """Units of the handlers that ran active; for SIP services also sockets listening and OPTIONS answered.

    The sockets are those of the cfg on disk now (gate["cfg"]): after a rollback, the restored one's.
    A socket is probed with OPTIONS straight away: a port nobody listens on refuses at once (TCP RST,
    ICMP port unreachable on the connected UDP socket), so no /proc/net/tcp walk is needed, which on
    a proxy holding 100k connections costs more than the whole gate. A unit that has failed (or waits
    to be restarted after failing) is not waited on.
    """
    from sipops.host.sip import options_ping  # here: the other ops never load it

    units = [u for h in handlers for u in gate.get("units", {}).get(h["name"], [])]
    sip = [u for u in units if u in gate.get("sip_units", [])]
    sockets = gate.get("sockets", [])
    if gate.get("cfg"):
        try:
            with open(root + gate["cfg"], encoding="utf-8", errors="replace") as f:
                sockets = [s for s in cfg_sockets(f.read()) if s["proto"] in ("udp", "tcp")] or sockets
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    while True:
        states = _unit_states(units)
        checks = [{"what": f"{u} active", "ok": st == "active", "detail": st} for u, st in states]
        if sip and all(c["ok"] for c in checks):
            for s in sockets:
                where = f"{s['proto']}:{s['address']}:{s['port']}"
                r = options_ping(s["proto"], s["address"], int(s["port"]), timeout=1.0)
                detail = r.error if r.refused else ""
                checks.append({"what": f"{where} listening", "ok": not r.refused, "detail": detail})
                if not r.refused:
                    checks.append({"what": f"SIP OPTIONS {where}", "ok": r.alive, "detail": r.describe()})
        elif sip:
            checks += [
                {
                    "what": f"{s['proto']}:{s['address']}:{s['port']} listening",
                    "ok": False,
                    "detail": "not probed: service not active",
                }
                for s in sockets
            ]
        failed = any(st.startswith("failed") for _, st in states)
        if all(c["ok"] for c in checks) or failed or time.monotonic() >= deadline:
            return checks
        time.sleep(0.05)  # a restarted OpenSIPS answers within tens of ms: do not wait a whole 0.2 s


def _unit_states(units: list[str]) -> list[tuple[str, str]]:
    """ActiveState per unit; "failed (auto-restart)" for one that died and waits for Restart=."""
    if not units:
        return []
    _, text = _run(["systemctl", "show", "-p", "ActiveState,SubState", "--", *units])
    blocks = text.strip().split("\n\n")
    out = []
    for i, u in enumerate(units):
        kv = dict(line.partition("=")[::2] for line in (blocks[i] if i < len(blocks) else "").splitlines())
        state, sub = kv.get("ActiveState", "unknown"), kv.get("SubState", "")
        out.append((u, "failed (auto-restart)" if sub == "auto-restart" else state))
    return out


def logs(gate: Json, handlers: list[Json]) -> Json:
    out: Json = {}
    for u in {u for h in handlers for u in gate.get("units", {}).get(h["name"], [])}:
        out[f"journalctl -u {u}"] = _run(["journalctl", "-u", u, "-n", "30", "--no-pager", "-q"])[1][-4000:]
    if gate.get("log_file") and os.path.isfile(gate["log_file"]):
        out[f"tail {gate['log_file']}"] = _run(["tail", "-n", "30", gate["log_file"]])[1][-4000:]
    return out


def list_backups(req: Json) -> list[Json]:
    import json

    base = state_dir(req) + "/backups"
    out = []
    for stamp in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        try:
            with open(f"{base}/{stamp}/manifest.json") as fh:
                m = json.load(fh)
        except (OSError, ValueError):
            continue
        m["stamp"] = stamp
        out.append(m)
    return out


def prune(req: Json) -> None:
    import shutil

    keep = int(req.get("keep", 10))
    base = state_dir(req) + "/backups"
    stamps = sorted(os.listdir(base)) if os.path.isdir(base) else []
    for old in stamps[: max(0, len(stamps) - keep)]:
        shutil.rmtree(f"{base}/{old}", ignore_errors=True)
    rdir = state_dir(req) + "/results"
    results = sorted(os.listdir(rdir)) if os.path.isdir(rdir) else []
    for old in results[: max(0, len(results) - keep)]:
        os.unlink(f"{rdir}/{old}")


# --- place: the artifacts install runs from (a wheelhouse, a release tarball) ------------------------
# Not managed files (no validation, backup or handlers: nothing reads them until a step unpacks them),
# but put the same way: read whole and checked against their sha256 before anything is renamed, each
# written beside its destination and renamed into place under the host's lock, so never half there.


def place(req: Json, stream: IO[bytes]) -> Json:
    """With "check": which files differ from the host's (nothing read or written), so unchanged
    megabytes are never sent. Else the payload holds each file's bytes, in request order."""
    root = _root(req)
    files = req["files"]
    if req.get("check"):
        return {"ok": True, "differ": [f["path"] for f in files if _live_sha256(root + f["path"]) != f["sha256"]]}
    written: list[str] = []
    for f in files:
        new = root + f["path"] + NEW
        written.append(new)
        if not _receive(stream, new, f):
            for path in written:
                if os.path.exists(path):
                    os.unlink(path)
            return {"ok": False, "phase": "transfer", "error": f"transfer cut short at {f['path']}; nothing changed"}
    fd, holder = lock(req)
    if fd is None:
        for path in written:
            os.unlink(path)
        waited = req.get("lock_timeout", 60)
        return {"ok": False, "phase": "lock", "error": f"host is locked by {holder} (waited {waited}s)"}
    try:
        for f in files:
            live = root + f["path"]
            os.replace(live + NEW, live)
            _fsync_dir(os.path.dirname(live))
    finally:
        os.close(fd)
    return {"ok": True, "placed": [f["path"] for f in files]}


def _live_sha256(path: str) -> str | None:
    try:
        return sha256(path) if os.path.isfile(path) else None
    except OSError:
        return None


def _receive(stream: IO[bytes], new: str, f: Json) -> bool:
    """f["size"] bytes of the payload into `new` (root's, f["mode"], fsynced); False when cut short or
    their sha256 is not f["sha256"]."""
    os.makedirs(os.path.dirname(new), mode=0o755, exist_ok=True)
    h = _sha256()
    left = int(f["size"])
    with open(new, "wb") as fh:
        while left:
            block = stream.read(min(left, 1 << 20))
            if not block:
                break
            h.update(block)
            fh.write(block)
            left -= len(block)
        os.fchown(fh.fileno(), 0, 0)
        os.fchmod(fh.fileno(), int(f.get("mode", "0644"), 8))
        fh.flush()
        os.fsync(fh.fileno())
    return not left and h.hexdigest() == f["sha256"]
