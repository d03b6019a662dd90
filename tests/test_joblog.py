"""A job's log has one reader (runners/backends/joblog.py), shared by the runner and `tunebot logs`."""

from __future__ import annotations

import threading

from runners.backends.joblog import follow_log, last_lines, log_written, read_log, start_attempt
from runners.job import Job


def _append(path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


def _job(tmp_path) -> Job:
    return Job(kind="train", model="m", work_dir=str(tmp_path), log_path=str(tmp_path / "job.log"))


def test_a_job_without_a_log_reads_as_none_or_empty(tmp_path):
    job = _job(tmp_path)
    assert last_lines(job, 5) is None
    assert read_log(job) == ""
    assert log_written(job) is None
    assert list(follow_log(job, done=lambda: True)) == []


def test_read_log_is_the_last_attempt_only(tmp_path):
    job = _job(tmp_path)
    start_attempt(tmp_path / "job.log", "train #1, attempt 1")
    _append(tmp_path / "job.log", "first try failed\n")
    start_attempt(tmp_path / "job.log", "train #1, attempt 2")
    _append(tmp_path / "job.log", "second try\n")
    assert read_log(job) == "=== tunebot: train #1, attempt 2\nsecond try\n"
    assert last_lines(job, 3) == ["first try failed", "=== tunebot: train #1, attempt 2", "second try"]


def test_last_lines_reach_back_over_several_blocks(tmp_path):
    job = _job(tmp_path)
    lines = [f"line {i} " + "x" * 1000 for i in range(300)]  # ~300 KB: several 64 KiB blocks
    (tmp_path / "job.log").write_text("\n".join(lines) + "\n")
    assert last_lines(job, 200) == lines[-200:]
    assert last_lines(job, 1000) == lines
    size = log_written(job)[1]
    assert size == (tmp_path / "job.log").stat().st_size


def test_a_tail_of_a_log_without_line_ends_is_bounded(tmp_path, monkeypatch):
    from runners.backends import joblog

    job = _job(tmp_path)
    (tmp_path / "job.log").write_bytes(b"start\n" + b"y" * (3 * 2**20))  # one 3 MiB line at the end
    monkeypatch.setattr(joblog, "_TAIL_MAX", 2**20)
    tail = last_lines(job, 5)
    assert len(tail) == 1 and 2**20 <= len(tail[0]) < 2**20 + joblog._BLOCK  # not the whole file
    # a progress bar's carriage returns end lines too: ten bar updates are ten lines
    (tmp_path / "job.log").write_bytes(b"head\n" + b"".join(b"\r%3d%%" % i for i in range(10)) + b"\n")
    assert last_lines(job, 3) == ["  7%", "  8%", "  9%"]


def test_follow_log_yields_only_new_lines_and_stops_when_done(tmp_path):
    job = _job(tmp_path)
    path = tmp_path / "job.log"
    path.write_text("old\n")
    assert list(follow_log(job, done=lambda: True)) == []  # the lines already there are last_lines'

    def write_later():
        with path.open("a") as fh:
            fh.write("new 1\n")
            fh.flush()
            fh.write("new 2\n")

    seen: list[str] = []
    timer = threading.Timer(0.2, write_later)
    timer.start()
    for line in follow_log(job, done=lambda: len(seen) >= 2, pause=0.05):
        seen.append(line)
    timer.join()
    assert seen == ["new 1\n", "new 2\n"]
