"""`orchestration logs`' reading rules on real files: --tail from the end however long the lines,
--follow printing only complete lines, once each, and starting over when a log is restarted."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from orchestration.backends.local import _file_size, _read_from
from orchestration.commands.logs import Follower, run_filter, tail_lines
from orchestration.launcher import LogSource


def source(path: Path) -> LogSource:
    return LogSource("node-1", "log", partial(_file_size, path), partial(_read_from, path))


def test_tail_reads_back_from_the_end_until_it_has_enough_lines(tmp_path: Path) -> None:
    log = tmp_path / "node-1.log"
    lines = [f"{i:05d} " + "x" * (3000 if i % 7 == 0 else 10) for i in range(2000)]
    log.write_text("\n".join(lines) + "\nunfinished")
    got, offset = tail_lines(source(log), 25, run_filter(None))
    assert got == lines[-25:]
    assert offset == log.stat().st_size - len("unfinished")
    # with a filter the window grows until enough kept lines are found, or the file's start
    rare = tail_lines(source(log), 3, lambda line: line.startswith("0000"))[0]
    assert rare == [lines[7], lines[8], lines[9]]
    assert tail_lines(source(log), 0, run_filter(None))[0] == []


def test_follow_prints_complete_lines_once_and_starts_over_on_a_restarted_log(tmp_path: Path) -> None:
    log = tmp_path / "node-1.log"
    log.write_text("one\ntw")
    printed: list[str] = []
    follower = Follower(run_filter(None), ["s3cret-value-123"], printed.append)
    follower.start(source(log), None)
    assert printed == ["node-1 | one"]
    with log.open("a") as f:
        f.write("o\nthree has s3cret-value-123\n")
    follower.poll(source(log))
    follower.poll(source(log))  # nothing new: nothing printed
    assert printed == ["node-1 | one", "node-1 | two", "node-1 | three has ***"]
    log.write_text("again\n")  # the pool was launched again: the log starts over
    follower.poll(source(log))
    assert printed[-1] == "node-1 | again"


def test_the_run_filter_keeps_that_runs_lines_only() -> None:
    keep = run_filter("photos-1")
    assert keep("INFO consumer.worker: run=photos-1 batch=b000001 worker=w attempt=1")
    assert not keep("INFO consumer.worker: run=photos-10 batch=b000001 worker=w attempt=1")
    assert keep("ERROR consumer.worker: x run=photos-1")
    assert not keep("INFO consumer: worker w: consuming queue q")
