"""Run the scanner on a host that may not have sipops: ship its sources to `python3 -c`, read JSON back.

One SSH round trip: the script (the stdlib-only scanner modules plus a bootstrap that registers
them as sipops.monitor.*) goes compressed in one argument (~15 KB; the kernel allows 128 KiB),
the parameters in another, and the report comes back as one JSON line on stdout. Not on stdin:
invoke copies a non-terminal stdin one byte per 10 ms, which makes a 50 KB script take minutes.
"""

from __future__ import annotations

import base64
import json
import shlex
import zlib
from pathlib import Path
from typing import Any

from sipops.remote.runner import Runner

# Order matters: each module only imports the ones before it.
SHIPPED = ("sockdiag", "procnet", "scan", "report")
_HERE = Path(__file__).resolve().parent.parent / "host" / "monitor"
_MARK = "SIPOPS-REPORT "

_BOOTSTRAP = """
import json, sys, types
for _name in ("sipops", "sipops.host", "sipops.host.monitor"):
    _pkg = types.ModuleType(_name)
    _pkg.__path__ = []
    sys.modules[_name] = _pkg
for _short, _src in _SOURCES:
    _name = "sipops.host.monitor." + _short
    _mod = types.ModuleType(_name)
    _mod.__file__ = "<sipops " + _name + ">"
    sys.modules[_name] = _mod
    exec(compile(_src, _mod.__file__, "exec"), _mod.__dict__)
    setattr(sys.modules["sipops.host.monitor"], _short, _mod)
from sipops.host.monitor.report import build_report
print(@MARK@ + json.dumps(build_report(json.loads(sys.argv[-1]))))
""".replace("@MARK@", repr(_MARK))


class RemoteError(Exception):
    """The scan on the host failed; the message says how (one line)."""


def script() -> str:
    """The Python program sent to the host."""
    sources = [(name, (_HERE / f"{name}.py").read_text()) for name in SHIPPED]
    return f"_SOURCES = {sources!r}\n{_BOOTSTRAP}"


_UNPACK = "import base64,sys,zlib;exec(zlib.decompress(base64.b64decode(sys.argv[1])))"


def command(params: dict[str, Any]) -> str:
    """The shell command that runs the scanner with `params` on the host."""
    payload = base64.b64encode(zlib.compress(script().encode(), 9)).decode()
    return shlex.join(["python3", "-c", _UNPACK, payload, json.dumps(params)])


def parse_output(stdout: str) -> dict[str, Any]:
    """The report from the program's stdout (the line after the marker)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(_MARK):
            report: dict[str, Any] = json.loads(line[len(_MARK) :])
            return report
    raise RemoteError("no report in the output of the remote scan")


def run_report(runner: Runner, params: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """Run the scanner on the host behind `runner` (python3 needed there, nothing else; sudo when not root)."""
    result = runner.exec(command(params), b"", timeout)
    if result.rc != 0:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = lines[-1] if lines else f"exit status {result.rc}"
        if result.rc == 127:
            detail = "python3 not found on the host"
        raise RemoteError(f"remote scan failed: {detail}")
    return parse_output(result.stdout.decode("utf-8", "replace"))
