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
    with caplog.at_level(logging.WARNING, logger="embeddings.progress"):
        for _ in range(50):
            progress.add("text", embedded=10)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1  # the first batch reports, the next ones wait for the interval
    assert "text: 10 embedded" in messages[0]
