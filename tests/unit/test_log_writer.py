"""The log writer: records queue up off the caller's path, are written in batches, all of
them at shutdown, and a full queue drops (and counts) instead of blocking."""

from __future__ import annotations

import io
import json
import logging
import threading

from proxy import logs
from proxy.logs import JSONFormatter, LogWriter, QueuedHandler


class GatedStream(io.StringIO):
    """A stderr that blocks its writer until `gate` is set: a stalled log collector."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.writes = 0

    def write(self, s: str) -> int:
        self.gate.wait(10)
        self.writes += 1
        return super().write(s)


def _logger(writer: LogWriter, name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [QueuedHandler(writer)]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def test_every_line_is_written_by_shutdown_in_few_writes() -> None:
    stream = GatedStream()
    writer = LogWriter(stream, JSONFormatter())
    log = _logger(writer, "test.logwriter.all")
    for i in range(1000):
        log.info("access %d", i, extra={"fields": {"n": i}})
    stream.gate.set()
    writer.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [entry["n"] for entry in lines] == list(range(1000))
    assert lines[5]["msg"] == "access 5"
    assert stream.writes < 100  # batched, not one write per line
    assert writer.dropped == 0


def test_full_queue_drops_and_counts_without_blocking() -> None:
    stream = GatedStream()  # the writer thread is stuck in its first write
    writer = LogWriter(stream, JSONFormatter(), size=10)
    log = _logger(writer, "test.logwriter.full")
    log.info("first")  # taken by the thread, which then blocks on the stream
    for i in range(100):
        log.info("line %d", i)  # returns at once even though nothing is written
    assert writer.dropped >= 100 - 10 - 1
    stream.gate.set()
    writer.close()
    text = stream.getvalue()
    assert f"{writer.dropped} log line(s) dropped" in text
    assert len(text.splitlines()) >= 10


def test_shutdown_restores_direct_logging(capsys) -> None:
    logs.setup("INFO")
    logging.getLogger("pullgate.test").info("queued line")
    logs.shutdown()
    logging.getLogger("pullgate.test").info("direct line")
    err = capsys.readouterr().err
    assert "queued line" in err and "direct line" in err


def test_writes_are_whole_lines_within_pipe_buf() -> None:
    lines = [f"line {i} " + "x" * (i % 300) for i in range(400)] + ["y" * 9000]
    got = list(logs.chunks(lines))
    assert "".join(got) == "".join(line + "\n" for line in lines)
    assert all(c.endswith("\n") for c in got)
    assert all(len(c.encode()) <= logs.WRITE_MAX for c in got if "y" * 9000 not in c)
    assert len(got) < len(lines) / 5  # batched
