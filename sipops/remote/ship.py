"""What runs on a host and how it gets there: one boot path for every job (push, tune, drain, health,
conns, users, crowdsec, install's SIP probe) and the cron zipapp.

A job names its entry point (`sipops.host.agent:main`). Its bundle is that module's closure of imports
inside sipops.host, read from the package's sources with ast (no list to keep, no string edits: host
modules import each other normally), plus the packages above them. BOOT (sent as `python3 -S -c`)
reads a header, the bundle (left out when the host has it: see sipops.remote.runner.call), the request
(marshal: no json import on the host) and the payload from stdin; keeps the compiled bundle in a
root-only cache keyed by the bundle's hash and the Python's cache tag; imports the entry through a
meta_path finder over the bundle; prints the entry's return value as one marked line (a Python literal).
"""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import marshal
import threading
import zipfile
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import sipops

MARK = "SIPOPS-RESULT "
NEED_CODE = "SIPOPS-NEED-CODE"
CODE_CACHE = "/var/cache/sipops"
PACKAGE_ROOT = Path(sipops.__file__).resolve().parent
HOST = "sipops.host"
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed: the same sipops gives the same bytes (and hash)

# The finder both forms share: C maps a module name to (is_package, code). _frozen_importlib is
# already loaded; importlib.util would cost every run an import.
_FINDER = """from _frozen_importlib import ModuleSpec
class F:
 def find_spec(s,m,p=None,t=None):return ModuleSpec(m,s,is_package=C[m][0]) if m in C else None
 def create_module(s,spec):return None
 def exec_module(s,m):exec(C[m.__name__][1],m.__dict__)
sys.meta_path.insert(0,F())
def X(e):e=e.split(':');return getattr(__import__(e[0],fromlist=['_']),e[1])
"""
_COMPILE = "{k:(v[0],compile(v[1],'<sipops>/'+k.replace('.','/')+'.py','exec')) for k,v in marshal.loads(%s).items()}"

# stdin: "<bundle size> <request size> <payload size> <digest> <entry>\n" bundle request payload.
# A cached bundle is owned by this user and writable by nobody else, else it is not trusted.
BOOT = (
    f"""import sys,os,marshal
b=sys.stdin.buffer;h=b.readline().split();n=[int(x) for x in h[:3]]
d='{CODE_CACHE}';p=d+'/code-'+h[3].decode()+'-'+sys.implementation.cache_tag
try:
 st=os.stat(p)
 if st.st_uid!=os.geteuid() or st.st_mode&0o22:raise OSError
 C=marshal.loads(open(p,'rb').read());b.read(n[0])
except Exception:
 if not n[0]:print('{NEED_CODE}');sys.exit(0)
 C={_COMPILE % "b.read(n[0])"}
 try:
  os.makedirs(d,0o700,exist_ok=True);t='%s.%d'%(p,os.getpid());open(t,'wb').write(marshal.dumps(C));os.rename(t,p)
 except Exception:pass
"""
    + _FINDER
    + f"r=X(h[4].decode())(marshal.loads(b.read(n[1])),b,n[2])\nsys.stdout.write('{MARK}'+ascii(r)+'\\n')"
)

# The same boot for a command inside a shell script (stdin is the script): the bundle in argv[1],
# the entry in argv[2], its arguments after; the entry's return value is the exit status.
BOOT_ARGV = (
    "import sys,marshal,zlib,base64\n"
    + f"C={_COMPILE % 'zlib.decompress(base64.b64decode(sys.argv[1]))'}\n"
    + _FINDER
    + "sys.exit(X(sys.argv[2])(sys.argv[3:]))"
)


@dataclass(frozen=True)
class Bundle:
    modules: tuple[str, ...]
    blob: bytes  # marshal of {name: (is_package, source)}
    digest: str


def module_file(name: str) -> tuple[Path, bool]:
    """The source file of `name` and whether it is a package."""
    rel = Path(*name.split("."))
    pkg = PACKAGE_ROOT.parent / rel / "__init__.py"
    if pkg.is_file():
        return pkg, True
    return PACKAGE_ROOT.parent / rel.with_suffix(".py"), False


def _is_module(name: str) -> bool:
    return module_file(name)[0].is_file()


def _imports(name: str) -> set[str]:
    """The sipops.host modules `name` imports (anywhere in it: lazy imports in functions count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module_file(name)[0].read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(HOST))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(HOST):
            mod = str(node.module)
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names if _is_module(f"{mod}.{a.name}"))
    return found


@cache
def closure(module: str) -> tuple[str, ...]:
    """`module`, every sipops.host module it imports transitively, and their packages; sorted."""
    todo, seen = [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if not _is_module(name):
            raise ValueError(f"{name}: no such module in sipops")
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imports(name))
    return tuple(sorted(seen))


def sources(module: str) -> dict[str, tuple[bool, str]]:
    return {n: (module_file(n)[1], module_file(n)[0].read_text()) for n in closure(module)}


_built: dict[str, Bundle] = {}
_lock = threading.Lock()


def bundle(entry: str) -> Bundle:
    """The bundle of an entry point `package.module:function`, built once per process: under a lock, as
    a fleet's threads all ask for it at once (each building it would cost a push ~35 ms of CPU per host)."""
    with _lock:
        if entry not in _built:
            module = entry.partition(":")[0]
            blob = marshal.dumps(sources(module), 4)  # readable by any python3 since 3.4
            _built[entry] = Bundle(closure(module), blob, hashlib.sha256(blob).hexdigest()[:32])
        return _built[entry]


def stdin(entry: str, request: bytes, payload: bytes, *, with_code: bool) -> bytes:
    b = bundle(entry)
    code = b.blob if with_code else b""
    return f"{len(code)} {len(request)} {len(payload)} {b.digest} {entry}\n".encode() + code + request + payload


def argv_command(entry: str, args: list[str]) -> list[str]:
    """argv running `entry(args)` on the host with no stdin (a step of a shell script); exits with its return."""
    blob = base64.b64encode(zlib.compress(bundle(entry).blob, 9)).decode()
    return ["python3", "-S", "-c", BOOT_ARGV, blob, entry, *args]


def zipapp_bytes(module: str, function: str) -> bytes:
    """A zipapp of `module`'s bundle whose __main__ exits with `function()`; deterministic bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, (is_pkg, text) in sorted(sources(module).items()):
            path = "/".join(name.split(".")) + ("/__init__.py" if is_pkg else ".py")
            zf.writestr(zipfile.ZipInfo(path, _ZIP_DATE), text)
        main = f"import sys\nfrom {module} import {function}\nsys.exit({function}())\n"
        zf.writestr(zipfile.ZipInfo("__main__.py", _ZIP_DATE), main)
    return b"#!/usr/bin/env python3\n" + buffer.getvalue()
