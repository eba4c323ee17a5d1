"""CrowdSec credentials on hosts (stdlib only): run by
sipops.remote.runner.call(entry="sipops.host.crowdsec_creds:main").

Secrets travel in the request on stdin, never in an argument list:
- on a fleet host, `check` logs in with the stored credentials and pulls the stream (ok, missing,
  or the LAPI's reason); `store` generates the machine password HERE (it never leaves the host),
  registers the machine on the LAPI (POST /v1/watchers: unvalidated until the LAPI host validates it),
  and writes /etc/sipops/crowdsec.json (0600) with the bouncer key the LAPI host made;
- on the LAPI host, `prepare` deletes a stale machine/bouncer of that name and adds the bouncer with
  `cscli bouncers add NAME -o raw` (cscli generates the key and prints it: it is in no process's
  arguments); `validate` runs `cscli machines validate NAME`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import urllib.error
import urllib.request

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

    Json = dict[str, Any]

CREDENTIALS = "/etc/sipops/crowdsec.json"
TIMEOUT = 5.0


def main(req: Json, stream: IO[bytes], size: int) -> Json:
    try:
        out = ACTIONS[req["action"]](req)
    except RuntimeError as exc:  # our own one-line reasons (the LAPI unreachable)
        out = {"ok": False, "error": str(exc).splitlines()[0]}
    except Exception as exc:  # the controller shows the host's reason rather than a traceback
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    return out


def _http(url: str, path: str, body: Json | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url + "/v1" + path, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    where = url.split("://", 1)[-1]
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:  # http/https only: the URL was parsed before
            return int(resp.status), resp.read(1 << 20).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        raw = exc.read(4096).decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):
            raw = str(json.loads(raw).get("message") or raw)
        return int(exc.code), raw.splitlines()[0][:200] if raw else ""
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"LAPI {where} unreachable: {getattr(exc, 'reason', None) or exc}") from None


def check(req: Json) -> Json:
    """Are the stored credentials there, for this URL, and accepted (login and stream)?"""
    try:
        with open(CREDENTIALS) as fh:
            creds = json.load(fh)
    except FileNotFoundError:
        _http(req["url"], "/decisions/stream?startup=false")  # reachable at all? (403 expected)
        return {"ok": True, "state": "missing"}
    if creds.get("url") != req["url"] or creds.get("host") != req["host"]:
        _http(req["url"], "/decisions/stream?startup=false")
        return {"ok": True, "state": "other"}
    code, msg = _http(req["url"], "/watchers/login", {"machine_id": creds["machine_id"], "password": creds["password"],
                                                      "scenarios": []})  # fmt: skip
    if code != 200:
        return {"ok": True, "state": "refused", "why": f"machine login: {code} {msg}".strip()}
    code, msg = _http(req["url"], "/decisions/stream?startup=false", headers={"X-Api-Key": creds["api_key"]})
    if code != 200:
        return {"ok": True, "state": "refused", "why": f"bouncer key: {code} {msg}".strip()}
    if req.get("restart"):  # fresh credentials: the watcher reads them at start
        subprocess.run(["systemctl", "try-restart", "sipops-watch"], capture_output=True, timeout=60, check=False)
    return {"ok": True, "state": "ok"}


def store(req: Json) -> Json:
    """Register this host's machine (its password made here) and keep both credentials root-only."""
    password = secrets.token_urlsafe(32)
    code, msg = _http(req["url"], "/watchers", {"machine_id": req["machine_id"], "password": password})
    if code not in (200, 201, 202):
        return {"ok": False, "error": f"registering machine {req['machine_id']} on the LAPI: {code} {msg}".strip()}
    os.makedirs(os.path.dirname(CREDENTIALS), mode=0o755, exist_ok=True)
    tmp = CREDENTIALS + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": req["url"], "host": req["host"], "machine_id": req["machine_id"], "password": password,
                   "api_key": req["api_key"]}, fh)  # fmt: skip
    os.chmod(tmp, 0o600)
    os.replace(tmp, CREDENTIALS)
    return {"ok": True}


def _cscli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["cscli", *args], capture_output=True, text=True, timeout=60, check=False)


def prepare(req: Json) -> Json:
    """On the LAPI host: a fresh bouncer for the name (a stale one and a stale machine removed)."""
    name = req["name"]
    _cscli("machines", "delete", name)
    _cscli("bouncers", "delete", name)
    res = _cscli("bouncers", "add", name, "-o", "raw")
    lines = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
    if res.returncode != 0 or not lines:
        why = (res.stderr.strip().splitlines() or ["no key printed"])[-1]
        return {"ok": False, "error": f"cscli bouncers add {name}: {why}"}
    return {"ok": True, "api_key": lines[-1]}


def validate(req: Json) -> Json:
    res = _cscli("machines", "validate", req["name"])
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["failed"])[-1]
        return {"ok": False, "error": f"cscli machines validate {req['name']}: {why}"}
    return {"ok": True}


ACTIONS = {"check": check, "store": store, "prepare": prepare, "validate": validate}
