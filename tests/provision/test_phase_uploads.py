"""A phase step's file (wheelhouse, release tarball, apt source list) is put by the push agent just before
the step: the steps before it run without it, the step's guard and the steps after see it."""

from __future__ import annotations

from pathlib import Path

from sipops.provision.install import run_phase
from sipops.provision.steps import PhasePlan, Step, Upload
from sipops.remote.runner import LocalRunner


def phase(target: Path) -> PhasePlan:
    return PhasePlan(
        "opensips",
        [
            Step("key", f"test ! -e {target}"),  # fails if the list were there already
            Step("list", "false", unless=f"grep -qx deb {target}", upload=Upload(str(target), content=b"deb\n")),
            Step("install", f"grep -qx deb {target}"),
        ],
    )


def test_an_upload_is_placed_just_before_its_step_and_counts_as_a_change(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "opensips.list"
    results = run_phase(LocalRunner(), phase(target), check=False, watch=None)
    assert [(r.name, r.status) for r in results] == [("key", "changed"), ("list", "changed"), ("install", "changed")]
    assert target.read_bytes() == b"deb\n"


def test_check_mode_places_nothing(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "opensips.list"
    results = run_phase(LocalRunner(), phase(target), check=True, watch=None)
    assert [r.status for r in results] == ["would", "would", "would"] and not target.exists()


def test_an_upload_that_cannot_be_read_fails_its_step_and_skips_the_rest(tmp_path: Path) -> None:
    missing = Upload(str(tmp_path / "src.tar.gz"), local=str(tmp_path / "nowhere.tar.gz"))
    plan = PhasePlan("opensips", [Step("deps", "true"), Step("upload", "true", upload=missing), Step("build", "true")])
    results = run_phase(LocalRunner(), plan, check=False, watch=None)
    assert [(r.name, r.status) for r in results] == [("deps", "changed"), ("upload", "failed"), ("build", "skipped")]
    assert "nowhere.tar.gz" in results[1].output
