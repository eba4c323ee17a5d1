"""Ship the checks to hosts that have python3 and nothing else.

Two forms, built from the same standard-library-only modules:
- a script for `python3 -` (one SSH round trip: the modules, the config and the answer as JSON);
- a zipapp, `python3 sipops-health.pyz --local ...`, installed by `sipops cron install`.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import sipops

PACKAGE_ROOT = Path(sipops.__file__).resolve().parent
# Everything the agent imports; all of it standard library only (tests check the closure).
MODULES = (
    "sipops",
    "sipops.host",
    "sipops.host.sip",
    "sipops.host.safefile",
    "sipops.host.monitor",
    "sipops.host.monitor.sockdiag",
    "sipops.host.monitor.procnet",
    "sipops.host.monitor.scan",
    "sipops.host.health",
    "sipops.host.health.model",
    "sipops.host.health.config",
    "sipops.host.health.procfs",
    "sipops.host.health.mi",
    "sipops.host.health.logscan",
    "sipops.host.health.sources",
    "sipops.host.health.checks",
    "sipops.host.health.checks_mi",
    "sipops.host.health.ng",
    "sipops.host.health.checks_relay",
    "sipops.host.health.checks_crowdsec",
    "sipops.host.health.runner",
    "sipops.host.health.formats",
    "sipops.host.health.main",
)
MIN_PYTHON = (3, 9)
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed: the same sipops gives the same bytes (and hash)


def module_file(name: str) -> tuple[Path, bool]:
    """The source file of `name` and whether it is a package."""
    rel = Path(*name.split("."))
    pkg = PACKAGE_ROOT.parent / rel / "__init__.py"
    if pkg.is_file():
        return pkg, True
    return PACKAGE_ROOT.parent / rel.with_suffix(".py"), False


def sources() -> dict[str, tuple[bool, str]]:
    return {name: (module_file(name)[1], module_file(name)[0].read_text()) for name in MODULES}


_LOADER = """\
import base64, importlib.abc, importlib.util, json, sys, zlib
if sys.version_info < {min_python}:
    _have = "%d.%d" % sys.version_info[:2]
    print(json.dumps({{"error": "python3 here is " + _have + "; sipops health needs {min_text} or later"}}))
    sys.exit(0)
_SOURCES = json.loads(zlib.decompress(base64.b64decode("{blob}")))
class _Shipped(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name in _SOURCES:
            return importlib.util.spec_from_loader(name, self, is_package=_SOURCES[name][0])
        return None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        is_pkg, text = _SOURCES[module.__name__]
        if is_pkg:
            module.__path__ = []
        exec(compile(text, "<sipops>/" + module.__name__.replace(".", "/") + ".py", "exec"), module.__dict__)
sys.meta_path.insert(0, _Shipped())
from sipops.host.health.main import remote_entry
remote_entry(json.loads({payload!r}))
"""


def remote_script(payload: dict[str, Any]) -> str:
    """A script for `python3 -`: the modules (compressed) and `payload` (config, state name, ...)."""
    blob = base64.b64encode(zlib.compress(json.dumps(sources()).encode(), 9)).decode()
    return _LOADER.format(
        min_python=MIN_PYTHON,
        min_text=".".join(map(str, MIN_PYTHON)),
        blob=blob,
        payload=json.dumps(payload),
    )


def zipapp_bytes() -> bytes:
    """`sipops-health.pyz`: the modules and a __main__ running the agent; deterministic bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, (is_pkg, text) in sorted(sources().items()):
            path = "/".join(name.split(".")) + ("/__init__.py" if is_pkg else ".py")
            zf.writestr(zipfile.ZipInfo(path, _ZIP_DATE), text)
        main = "import sys\nfrom sipops.host.health.main import main\nsys.exit(main())\n"
        zf.writestr(zipfile.ZipInfo("__main__.py", _ZIP_DATE), main)
    return b"#!/usr/bin/env python3\n" + buffer.getvalue()
