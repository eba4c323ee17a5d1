"""Shared fixtures: write inventories to a temp dir and run the CLI in-process."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sipops.cli.main import app
from tests import opensips_builds

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "inventory.example.yaml"


@pytest.fixture
def write_inventory(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "inventory.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


class Cli:
    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str | Path) -> tuple[int, str, str]:
        result = self.runner.invoke(app, [str(a) for a in args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture(scope="module", params=opensips_builds.params())
def opensips_prefix(request: pytest.FixtureRequest) -> Path:
    """An OpenSIPS install prefix; a test taking it runs once per install in $SIPOPS_OPENSIPS_PREFIX."""
    prefix: Path = request.param
    return prefix


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """With SIPOPS_REQUIRE_OPENSIPS=1 (CI, where OpenSIPS is built), a skipped needs_opensips test fails."""
    outcome = yield
    report = outcome.get_result()
    required = os.environ.get("SIPOPS_REQUIRE_OPENSIPS") == "1"
    if report.skipped and required and item.get_closest_marker("needs_opensips"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"needs_opensips test skipped where OpenSIPS must run (SIPOPS_REQUIRE_OPENSIPS=1): {reason}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # a test on a real OpenSIPS is a needs_opensips test, whatever its file says
        if "opensips_prefix" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_opensips)
