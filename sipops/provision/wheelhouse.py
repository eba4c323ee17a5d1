"""sipops on the host (the watcher service and cron health checks run there), without internet.

The operator's machine builds a wheelhouse for the host's Python and architecture (sipops's own
wheel plus binary-compatible wheels of its dependencies), uploads it as one tar, and the host
unpacks the wheels with nothing but python3: no pip, no venv, no package index.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from sipops import __version__
from sipops.provision.steps import PhasePlan, Step, Upload, q

AGENT_PREFIX = "/opt/sipops"
REMOTE_TAR = "/var/lib/sipops/agent/wheelhouse.tar"
_ROOT = Path(__file__).resolve().parents[2]


class WheelhouseError(Exception):
    """The wheelhouse for the host could not be built (the message says which step and why)."""


def _source_root() -> Path | None:
    return _ROOT if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "sipops").is_dir() else None


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for top in ("pyproject.toml", "sipops", "roles", "templates"):
        base = root / top
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for p in paths:
            if "__pycache__" in p.parts:
                continue
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _own_wheel(out: Path) -> Path:
    root = _source_root()
    if root is not None:
        _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(root)],
            "build the sipops wheel",
        )
    else:
        _repack_installed(out)
    wheels = sorted(out.glob("sipops-*.whl"))
    if not wheels:
        raise WheelhouseError("building the sipops wheel produced no file")
    return wheels[-1]


def _repack_installed(out: Path) -> None:
    """Re-create the wheel of an installed (non-editable) sipops from its RECORD."""
    dist = importlib.metadata.distribution("sipops")
    files = dist.files or []
    name = f"sipops-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(out / name, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            path = Path(str(f.locate()))
            if path.is_file() and "__pycache__" not in f.parts and f.parts[0] != "..":
                zf.write(path, str(f))


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    return [
        line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise WheelhouseError(f"could not {what}: {tail}")


def build_wheelhouse(cache: Path, python: str, arch: str) -> tuple[Path, str]:
    """A tar of wheels for CPython `python` (e.g. "3.11") on `arch`; cached. Returns (tar, stamp)."""
    root = _source_root()
    digest = _tree_digest(root) if root else __version__
    stamp = f"sipops {__version__} {digest} cp{python.replace('.', '')} {arch}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:20]
    tar_path = cache / f"wheelhouse-{key}.tar"
    if tar_path.is_file():
        return tar_path, stamp
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = Path(tmp)
        own = _own_wheel(work)
        reqs = _requirements(own)
        tag = python.replace(".", "")
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--dest",
            str(work),
            "--python-version",
            python,
            "--implementation",
            "cp",
            "--abi",
            f"cp{tag}",
            "--abi",
            "abi3",
            "--abi",
            "none",
        ]
        for plat in ("manylinux2014", "manylinux_2_17", "manylinux_2_28", "manylinux_2_31"):
            argv += ["--platform", f"{plat}_{arch}"]
        argv += ["--platform", "any", *reqs]
        _run(argv, f"download dependency wheels for CPython {python} on {arch}")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for whl in sorted(work.glob("*.whl")):
                tf.add(whl, arcname=whl.name)
        part = tar_path.with_suffix(".part")
        part.write_bytes(buf.getvalue())
        part.replace(tar_path)
    return tar_path, stamp


# Runs on the host with its own python3: unpack every wheel into a fresh lib dir, swap it in, write the command.
_INSTALL = r"""
import os, shutil, sys, tarfile, zipfile
tar, prefix, stamp = sys.argv[1], sys.argv[2], sys.argv[3]
lib, new = os.path.join(prefix, "lib"), os.path.join(prefix, "lib.new")
shutil.rmtree(new, ignore_errors=True)
os.makedirs(new)
with tarfile.open(tar) as tf:
    for m in tf.getmembers():
        if not m.name.endswith(".whl"):
            continue
        with zipfile.ZipFile(tf.extractfile(m)) as zf:
            for name in zf.namelist():
                parts = name.split("/")
                if parts[0].endswith(".data"):
                    if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                        continue
                    parts = parts[2:]
                target = os.path.join(new, *parts)
                if name.endswith("/"):
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
os.makedirs(os.path.join(prefix, "bin"), exist_ok=True)
old = lib + ".old"
shutil.rmtree(old, ignore_errors=True)
if os.path.isdir(lib):
    os.rename(lib, old)
os.rename(new, lib)
shutil.rmtree(old, ignore_errors=True)
exe = os.path.join(prefix, "bin", "sipops")
with open(exe + ".tmp", "w") as f:
    f.write("#!/usr/bin/python3\nimport sys\nsys.path.insert(0, %r)\nfrom sipops.cli.main import run\nrun()\n" % lib)
os.chmod(exe + ".tmp", 0o755)
os.rename(exe + ".tmp", exe)
with open(os.path.join(prefix, ".wheelhouse"), "w") as f:
    f.write(stamp + "\n")
"""


def agent_phase(tar: Path, stamp: str, prefix: str = AGENT_PREFIX) -> PhasePlan:
    marker = f"{prefix}/.wheelhouse"
    return PhasePlan(
        "sipops agent",
        steps=[
            Step(
                f"sipops {__version__} in {prefix} (wheelhouse from this machine, no index needed)",
                f"python3 -c {q(_INSTALL)} {REMOTE_TAR} {prefix} {q(stamp)} && {prefix}/bin/sipops --version",
                unless=f"grep -qxF {q(stamp)} {marker} && {prefix}/bin/sipops --version",
                upload=Upload(REMOTE_TAR, local=str(tar)),
            ),
        ],
    )
