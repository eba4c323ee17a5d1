"""Every file sipops reads survives any content: one line naming the file, exit 2, nothing written.

The corpus is tests/data/hostile/ (small files) plus what the tests make in tmp_path (a file of hundreds
of MB, a symlink loop, a directory or a FIFO where a file goes, a file its reader may not open). Each
case runs the real CLI in a subprocess bounded by the harness itself: a timeout and an address-space
limit (RLIMIT_AS), so a hang or a memory blow-up fails the case instead of the machine.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "hostile"
TIMEOUT_S = 5  # generous for a loaded 2-core machine; each case takes a few tenths of a second here
MEMORY_BYTES = 1 << 30  # address space of the child: the interpreter and typer take a fraction of it

INVENTORY = "hosts:\n  h1:\n    address: 192.0.2.1\n"
YAML_CASES = sorted(p.name for p in DATA.glob("*.yaml"))
JSON_CASES = sorted(p.name for p in DATA.glob("*.json"))


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))


def run_cli(*args: str | Path, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    code = "import sys; from sipops.cli.main import run; sys.argv[0] = 'sipops'; run()"
    env = dict(os.environ, HOME=str(cwd), XDG_CACHE_HOME=str(cwd / ".cache"), PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return subprocess.run(
        [*prefix, sys.executable, "-c", code, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        preexec_fn=_limit_memory,
    )


def assert_refused(proc: subprocess.CompletedProcess[str], names: str, out: Path | None = None) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sipops: error: ") and names in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    if out is not None:
        assert not out.exists() or not any(out.iterdir()), "something was written"


# ---- what goes where a file should be, made in tmp_path ----


def _huge(path: Path) -> None:
    with open(path, "wb") as f:  # sparse: hundreds of MB to fstat, nothing on disk
        f.truncate(300 * 1024 * 1024)


def _over_cap(path: Path) -> None:
    path.write_text("# " + "x" * (2 * 1024 * 1024) + "\n")  # real bytes, just over the 1 MiB cap


def _many_nodes(path: Path) -> None:
    path.write_text("x: [" + "a," * 500_000 + "a]\n")  # just under the size cap, 500k nodes to compose


def _loop(path: Path) -> None:
    path.symlink_to(path.name)


def _directory(path: Path) -> None:
    path.mkdir()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


MAKERS: dict[str, Callable[[Path], None]] = {
    "huge": _huge,
    "over_cap": _over_cap,
    "many_nodes": _many_nodes,
    "symlink_loop": _loop,
    "directory": _directory,
    "fifo": _fifo,
}


def _place(tmp_path: Path, where: str) -> tuple[Path, str]:
    """Write a valid inventory and return (the path the hostile file goes to, its name in messages)."""
    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    target = {
        "inventory": tmp_path / "hostile.yaml",
        "tuned": tmp_path / "tuned" / "h1.yaml",
        "role": tmp_path / "roles" / "common.yaml",
        "template": tmp_path / "templates" / "opensips" / "opensips.cfg.j2",
    }[where]
    target.parent.mkdir(parents=True, exist_ok=True)
    return target, target.name


def _render(tmp_path: Path, where: str) -> subprocess.CompletedProcess[str]:
    inv = tmp_path / ("hostile.yaml" if where == "inventory" else "inventory.yaml")
    return run_cli("render", "all", "-i", inv, "-o", tmp_path / "out", cwd=tmp_path)


@pytest.mark.parametrize("where", ["inventory", "tuned", "role"])
@pytest.mark.parametrize("case", YAML_CASES)
def test_a_hostile_yaml_file_is_one_line_and_exit_2(tmp_path: Path, where: str, case: str) -> None:
    target, name = _place(tmp_path, where)
    shutil.copy(DATA / case, target)
    proc = _render(tmp_path, where)
    assert_refused(proc, name, tmp_path / "out")
    assert f"{name}:" in proc.stderr


@pytest.mark.parametrize("where", ["inventory", "tuned", "role", "template"])
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_what_is_not_a_readable_file_is_one_line_and_exit_2(tmp_path: Path, where: str, kind: str) -> None:
    target, name = _place(tmp_path, where)
    MAKERS[kind](target)
    assert_refused(_render(tmp_path, where), name, tmp_path / "out")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{% if true %}" * 3000, "template error"),  # Jinja's parser recurses once per level
        ("{{ inventory_hostname }}" * 4000, "file too large"),  # compiling it would take seconds
    ],
    ids=["deep_nesting", "too_many_expressions"],
)
def test_a_hostile_template_is_one_line_and_exit_2(tmp_path: Path, source: str, expected: str) -> None:
    target, name = _place(tmp_path, "template")
    target.write_text(source)
    proc = _render(tmp_path, "template")
    assert_refused(proc, name, tmp_path / "out")
    assert expected in proc.stderr


def test_a_template_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    target, name = _place(tmp_path, "template")
    target.write_bytes(b"# fine\n# fine\nlog_level = \xff\n")
    proc = _render(tmp_path, "template")
    assert_refused(proc, f"{name}:3:", tmp_path / "out")


# Root reads anything: the CLI runs without the capabilities that bypass file permissions.
NO_DAC = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")


@pytest.mark.skipif(shutil.which("setpriv") is None and os.geteuid() == 0, reason="needs setpriv (util-linux) as root")
@pytest.mark.parametrize("where", ["inventory", "tuned", "role", "template"])
def test_a_file_the_user_may_not_read_is_one_line_and_exit_2(tmp_path: Path, where: str) -> None:
    target, name = _place(tmp_path, where)
    target.write_text("x: 1\n")
    target.chmod(0)
    inv = tmp_path / ("hostile.yaml" if where == "inventory" else "inventory.yaml")
    prefix = NO_DAC if os.geteuid() == 0 else ()
    proc = run_cli("render", "all", "-i", inv, "-o", tmp_path / "out", cwd=tmp_path, prefix=prefix)
    assert_refused(proc, name, tmp_path / "out")
    assert "Permission denied" in proc.stderr


@pytest.mark.parametrize("case", [*JSON_CASES, *sorted(MAKERS)])
def test_a_hostile_health_json_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    config = tmp_path / "health.json"
    if case in MAKERS:
        MAKERS[case](config)
    else:
        shutil.copy(DATA / case, config)
    proc = run_cli("health", "--local", "--config", config, "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert_refused(proc, "health.json", tmp_path / "state")
