"""The log cursor: new error lines once, across rotation (dateext and .1), truncation and late writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sipops.host.health.logscan import scan


class Log:
    """A log file, written line by line with unique ids, and a reader that keeps the cursor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n = 0
        self.state: dict[str, Any] | None = None
        self.seen: list[str] = []

    def write(self, count: int, level: str = "INFO", path: Path | None = None) -> list[str]:
        lines = []
        with open(path or self.path, "a") as f:
            for _ in range(count):
                self.n += 1
                line = f"Nov 28 10:00:00 sip1 opensips[42]: {level}:core:main: line {self.n}"
                f.write(line + "\n")
                lines.append(line)
        return lines

    def run(self) -> Any:
        result = scan(str(self.path), self.state, on_line=lambda b: self.seen.append(b.decode().rstrip("\n")))
        self.state = result.state
        return result


def test_first_run_starts_at_the_end_and_old_errors_are_not_news(tmp_path: Path) -> None:
    log = Log(tmp_path / "opensips.log")
    log.write(3, "ERROR")
    first = log.run()
    assert first.started and first.errors == 0 and log.seen == []
    log.write(2, "ERROR")
    second = log.run()
    assert second.errors == 2 and not second.started


def test_errors_are_reported_once_not_on_every_later_run(tmp_path: Path) -> None:
    log = Log(tmp_path / "opensips.log")
    log.write(1)
    log.run()
    log.write(2, "ERROR")
    log.write(1, "CRITICAL")
    result = log.run()
    assert (result.errors, result.crits) == (2, 1)
    assert "ERROR:core:main: line 2" in result.sample
    assert log.run().errors == 0
    assert log.run().errors == 0


def _rotation_case(tmp_path: Path, rotated_name: str) -> None:
    log = Log(tmp_path / "opensips.log")
    log.write(5)
    log.run()
    expected = log.write(3, "ERROR") + log.write(2)
    os.rename(log.path, tmp_path / rotated_name)  # logrotate renames ...
    expected += log.write(2, "ERROR", path=tmp_path / rotated_name)  # ... rsyslog writes on until its HUP
    expected += log.write(4, "ERROR")  # ... then reopens: a new file (new inode)
    result = log.run()
    assert log.seen == expected  # nothing lost, nothing twice, in order
    assert result.errors == 9
    later = log.write(1, "ERROR", path=tmp_path / rotated_name)  # a straggler in the old file
    later += log.write(1, "ERROR")
    result = log.run()
    assert log.seen == expected + later
    assert result.errors == 2
    assert log.run().errors == 0 and log.seen == expected + later


def test_rotation_with_dateext_name_loses_and_repeats_nothing(tmp_path: Path) -> None:
    _rotation_case(tmp_path, "opensips.log-20261128-1795852800")


def test_rotation_with_numbered_name_loses_and_repeats_nothing(tmp_path: Path) -> None:
    _rotation_case(tmp_path, "opensips.log.1")


def test_two_rotations_between_runs_without_the_first_file_say_so(tmp_path: Path) -> None:
    log = Log(tmp_path / "opensips.log")
    log.write(1)
    log.run()
    log.write(2, "ERROR")
    os.rename(log.path, tmp_path / "opensips.log.1")
    os.remove(tmp_path / "opensips.log.1")  # compressed away (new inode) before we came back
    log.write(1, "ERROR")
    result = log.run()
    assert result.errors == 1
    assert any("gone" in n for n in result.notes)


def test_a_partial_last_line_is_read_once_it_is_complete(tmp_path: Path) -> None:
    log = Log(tmp_path / "opensips.log")
    log.write(1)
    log.run()
    with open(log.path, "a") as f:
        f.write("Nov 28 opensips[1]: ERR")
    assert log.run().errors == 0
    with open(log.path, "a") as f:
        f.write("OR:core: finished\n")
    result = log.run()
    assert result.errors == 1 and log.seen == ["Nov 28 opensips[1]: ERROR:core: finished"]


def test_copytruncate_is_read_from_the_start(tmp_path: Path) -> None:
    log = Log(tmp_path / "opensips.log")
    log.write(10)
    log.run()
    log.write(1)
    log.run()
    log.path.write_text("")  # truncated in place (same inode)
    expected = log.write(1, "ERROR")
    result = log.run()
    assert result.errors == 1 and log.seen[-1:] == expected
    assert any("truncated" in n for n in result.notes)


def test_a_log_that_appears_later_is_read_from_its_first_line(tmp_path: Path) -> None:
    log = Log(tmp_path / "opensips.log")
    assert log.run().started
    expected = log.write(2, "ERROR")
    result = log.run()
    assert result.errors == 2 and log.seen == expected


def test_warning_and_notice_lines_are_not_errors(tmp_path: Path) -> None:
    log = Log(tmp_path / "opensips.log")
    log.run()
    log.write(1, "WARNING")
    log.write(1, "NOTICE")
    log.write(1, "INFO")
    assert log.run().errors == 0
