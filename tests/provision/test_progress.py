"""Live progress of long install steps: what a terminal shows, what a log gets, and the stream it is made from."""

from __future__ import annotations

import io

from sipops.provision.progress import Board, Running, clean, plain_line, status_line
from sipops.provision.runner import run_steps
from sipops.provision.steps import Step, StepStream, StepWatch
from sipops.remote.runner import LocalRunner

BUILD = "build and install 3.6.8 with auth auth_db db_sqlite httpd maxfwd mi_fifo mi_http nathelper pike registrar"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Recorder(StepWatch):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def started(self, step: str) -> None:
        self.events.append(("started", step))

    def output(self, line: str) -> None:
        self.events.append(("output", line))

    def finished(self) -> None:
        self.events.append(("finished", ""))


def test_a_status_line_shows_host_phase_step_elapsed_and_the_last_output_line() -> None:
    r = Running("h1", "opensips", "download tarball", started=100.0, last="Compiling tm.so")
    assert status_line(r, 141.7, 120) == "h1: opensips: download tarball 41s | Compiling tm.so"


def test_a_long_step_name_gives_way_to_the_elapsed_time_and_the_output_on_a_narrow_terminal() -> None:
    r = Running("h1", "opensips", BUILD, started=0.0, last="CC (gcc) [M tm.so] t_reply.o")
    line = status_line(r, 95.0, 80)
    assert len(line) == 79  # never the last column: a wrapped line would break the redraw
    assert line == "h1: opensips: build and install 3.6.8 with … 95s | CC (gcc) [M tm.so] t_reply.o"
    assert status_line(Running("h1", "opensips", BUILD, 0.0), 5.0, 200).endswith("registrar 5s")


def test_colours_and_carriage_returns_of_a_build_are_cleaned_from_the_line() -> None:
    assert clean("\x1b[01;32mCC\x1b[0m  t_reply.o\r") == "CC t_reply.o"


def test_a_plain_line_names_the_step_how_long_it_ran_and_its_last_output() -> None:
    r = Running("h1", "opensips", "build it", started=0.0, last="CC tm.so")
    assert plain_line(r, 30.2) == "h1: opensips: build it: running for 30s; last output: CC tm.so"
    assert plain_line(Running("h1", "dependencies", "apt", 0.0), 61) == "h1: dependencies: apt: running for 61s"


def test_without_a_terminal_a_long_step_gets_a_plain_line_every_period_and_a_quick_one_none() -> None:
    out, clock = io.StringIO(), Clock()
    board = Board(out, live=False, clock=clock, every=30)
    quick, build = board.watch("h2", "files"), board.watch("h1", "opensips")
    quick.started("tiny step")
    quick.finished()
    build.started("build it")
    build.output("CC \x1b[1mtm.so\x1b[0m")
    for now in (110.0, 129.0, 130.0, 131.0, 159.0, 160.5):
        clock.now = now
        board.tick()
    build.finished()
    clock.now = 300.0
    board.tick()
    board.print("h1: opensips: 1 changed")
    assert out.getvalue().splitlines() == [
        "h1: opensips: build it: running for 30s; last output: CC tm.so",
        "h1: opensips: build it: running for 60s; last output: CC tm.so",
        "h1: opensips: 1 changed",
    ]
    assert "\x1b" not in out.getvalue()


def test_on_a_terminal_status_lines_are_redrawn_below_the_regular_output_and_cleared_at_the_end() -> None:
    out, clock = Tty(), Clock()
    board = Board(out, live=True, clock=clock, width=lambda: 60, after=1.0)
    build = board.watch("h1", "opensips")
    build.started("build it")
    board.tick()  # not shown yet: a quick step never flickers
    assert out.getvalue() == ""
    clock.now = 105.0
    build.output("CC tm.so")
    assert out.getvalue().endswith("h1: opensips: build it 5s | CC tm.so\n")
    board.print("h2: files: 3 changed")  # a regular line goes above the status line
    up_and_clear = "\x1b[1A\x1b[2K"
    assert out.getvalue().endswith(f"{up_and_clear}h2: files: 3 changed\nh1: opensips: build it 5s | CC tm.so\n")
    build.finished()
    assert out.getvalue().endswith(f"{up_and_clear}")  # the finished step's line is gone
    board.__exit__(None, None, None)


def test_the_stream_of_a_phase_script_says_which_step_runs_and_what_it_prints() -> None:
    steps = [Step("first", "true"), Step("second", "true")]
    rec = Recorder()
    stream = StepStream(steps, rec)
    for chunk in (b"@@sipops-step 0 ok\n@@sipops-step 1 run\nmak", b"ing tm\n\n", b"@@sipops-step 1 changed\n"):
        stream.feed(chunk)
    stream.close()
    assert rec.events == [("started", "second"), ("output", "making tm"), ("finished", "")]


def test_a_step_s_output_reaches_the_watch_while_it_runs_and_the_result_is_unchanged() -> None:
    rec = Recorder()
    steps = [Step("build", "for i in 1 2 3; do echo compiling part $i; sleep 0.2; done"), Step("quiet", "true")]
    results = run_steps(LocalRunner(), steps, check=False, watch=rec)
    assert [(r.name, r.status, r.output) for r in results] == [("build", "changed", ""), ("quiet", "changed", "")]
    assert rec.events[0] == ("started", "build")
    assert [e for e in rec.events if e[0] == "output"] == [("output", f"compiling part {i}") for i in (1, 2, 3)]
    assert rec.events[-2:] == [("started", "quiet"), ("finished", "")]


def test_a_secret_step_streams_nothing() -> None:
    rec = Recorder()
    run_steps(LocalRunner(), [Step("db", "echo password=s3cret", secret=True)], check=False, watch=rec)
    assert rec.events == [("started", "db"), ("finished", "")]
