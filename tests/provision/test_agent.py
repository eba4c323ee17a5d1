"""The agent wheelhouse: built here for a host's Python, installed there with python3 alone."""

from __future__ import annotations

import platform
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from sipops import __version__
from sipops.provision.steps import Upload
from sipops.provision.wheelhouse import _INSTALL, WheelhouseError, agent_phase, build_wheelhouse


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        return build_wheelhouse(tmp_path_factory.mktemp("cache"), python, platform.machine())
    except WheelhouseError as exc:
        if "download" in str(exc):
            pytest.skip(f"no package index reachable to fetch dependency wheels: {exc}")
        raise


def test_the_wheelhouse_holds_sipops_and_every_dependency(wheelhouse: tuple[Path, str]) -> None:
    tar, stamp = wheelhouse
    with tarfile.open(tar) as tf:
        names = tf.getnames()
    for dist in ("sipops-", "typer-", "fabric-", "jinja2-", "psutil-", "pyroute2-", "pyyaml-"):
        assert any(n.lower().startswith(dist) for n in names), (dist, names)
    assert stamp.startswith(f"sipops {__version__} ")


def test_a_second_build_is_served_from_the_cache(wheelhouse: tuple[Path, str]) -> None:
    tar, stamp = wheelhouse
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert build_wheelhouse(tar.parent, python, platform.machine()) == (tar, stamp)


def test_the_host_installs_it_with_python3_only_and_runs_sipops(wheelhouse: tuple[Path, str], tmp_path: Path) -> None:
    tar, stamp = wheelhouse
    prefix = tmp_path / "opt-sipops"
    # -I: isolated from this venv and user site, as on a bare host
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _INSTALL, str(tar), str(prefix), stamp],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    wrapper = prefix / "bin/sipops"
    text = wrapper.read_text().replace("#!/usr/bin/python3", f"#!{sys.executable} -I", 1)
    wrapper.write_text(text)
    out = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == f"sipops {__version__}", out.stderr
    assert (prefix / ".wheelhouse").read_text().strip() == stamp
    assert not (prefix / "lib.new").exists()


def test_the_agent_step_uploads_the_tar_and_is_guarded_by_the_stamp(wheelhouse: tuple[Path, str]) -> None:
    tar, stamp = wheelhouse
    (step,) = agent_phase(tar, stamp).steps
    assert step.upload == Upload("/var/lib/sipops/agent/wheelhouse.tar", local=str(tar))
    assert step.unless is not None and "/opt/sipops/.wheelhouse" in step.unless
