"""Progress lines: live on a terminal, periodic log lines otherwise."""

import io
import logging

from transforms import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_terminal_gets_a_live_line_with_counts(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(progress, "TERMINAL_INTERVAL", 0.0)
    progress.reset()
    progress.add("text", embedded=1200, failed=3)
    progress.add("image", embedded=7, skipped=2)
    lines = terminal.getvalue().split("\r")
    assert "text: 1,200 embedded, 3 failed" in lines[-1]
    assert "image: 7 embedded, 0 failed, 2 skipped" in lines[-1]


def test_without_terminal_progress_goes_to_the_log_now_and_then(monkeypatch, caplog):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setattr(progress, "LOG_INTERVAL", 3600.0)
    progress.reset()
    with caplog.at_level(logging.INFO, logger="embeddings.progress"):
        for _ in range(50):
            progress.add("text", embedded=10)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1  # the first batch reports, the next ones wait for the interval
    assert "text: 10 embedded" in messages[0]
    assert [r.levelno for r in caplog.records] == [logging.INFO]  # progress is not a warning


def test_a_known_total_gives_percentage_and_eta(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(progress, "TERMINAL_INTERVAL", 0.0)
    clock = iter([100.0, 110.0])  # the first batch starts the clock, the second comes 10 s later
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    progress.reset()
    progress.set_total("image", 1000)
    progress.add("image", embedded=90, failed=10)
    progress.add("image", embedded=100)
    line = terminal.getvalue().split("\r")[-1]
    assert "image: 200/1,000 (20%)" in line
    assert "190 embedded, 10 failed, 20/s" in line
    assert "ETA 00:40" in line  # 800 left at 20/s
    assert line.startswith("[00:10]")


def test_without_a_total_no_percentage_is_made_up(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(progress, "TERMINAL_INTERVAL", 0.0)
    progress.reset()
    progress.add("text", embedded=5)
    line = terminal.getvalue().split("\r")[-1]
    assert "%" not in line and "ETA" not in line and "text: 5 embedded" in line


def test_finish_ends_the_live_line_with_the_final_counts(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(progress, "TERMINAL_INTERVAL", 3600.0)
    progress.reset()
    progress.set_total("image", 30)
    for _ in range(3):
        progress.add("image", embedded=10)  # only the first batch is drawn: the interval is long
    progress.finish()
    assert terminal.getvalue().endswith("\n")
    assert "image: 30/30 (100%), 30 embedded" in terminal.getvalue().split("\r")[-1]
