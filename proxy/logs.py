"""Logging: JSON lines on stderr, written off the event loop. Never a secret.

A log call only puts the record on a bounded queue; one thread formats what has
queued up and writes it to stderr in few writes (whole lines, at most PIPE_BUF
bytes each, so the lines of several workers sharing a pipe never interleave). A full queue drops the record
and counts it (`pullgate_log_dropped`; the writer says how many it lost once it
catches up): a slow stderr (a full pipe, a stalled log collector) must never
stall requests. `shutdown()` (run at exit) writes everything still queued.

The access line of each request is written by proxy.accesslog. A request whose
client hung up before its answer was complete is logged and counted as 499
(nginx's "client closed request"), never as a server error; a stream the proxy
cut for the client's sake (too slow) too. A stream cut because the upstream
broke keeps its status, with `aborted` saying why.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import queue
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from proxy import metrics

QUEUE_SIZE = 10_000  # records waiting for the writer; beyond, dropped and counted
BATCH = 512  # records taken from the queue at once
WRITE_MAX = 4096  # PIPE_BUF on Linux: a pipe write of this size is never split


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        return json.dumps(out, default=str)


class QueuedHandler(logging.Handler):
    """Puts records on a bounded queue for the LogWriter thread; never blocks the caller."""

    def __init__(self, writer: LogWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        # Formatted by the writer; the message is merged now, while its arguments are as logged.
        record.msg, record.args = record.getMessage(), None
        try:
            self.writer.queue.put_nowait(record)
        except queue.Full:
            self.writer.lost()


class LogWriter:
    """One thread that formats queued records and writes them to `stream` in batches."""

    def __init__(self, stream: TextIO, formatter: logging.Formatter, size: int = QUEUE_SIZE) -> None:
        self.stream = stream
        self.formatter = formatter
        self.queue: queue.Queue[logging.LogRecord | None] = queue.Queue(size)
        self.dropped = 0
        self._unreported = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pullgate-log-writer", daemon=True)
        self._thread.start()

    def lost(self) -> None:
        with self._lock:
            self.dropped += 1
            self._unreported += 1
        metrics.LOG_DROPPED.inc()

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            self._write([r for r in batch if r is not None])
            if stop:
                return

    def _write(self, records: list[logging.LogRecord]) -> None:
        lines = []
        for record in records:
            try:
                lines.append(self.formatter.format(record))
            except Exception:  # one bad record must not stop the log
                lines.append(json.dumps({"level": "error", "logger": "pullgate.logs", "msg": "unformattable record"}))
        with self._lock:
            lost, self._unreported = self._unreported, 0
        if lost:
            lines.append(
                json.dumps({"level": "warning", "logger": "pullgate.logs", "msg": f"{lost} log line(s) dropped"})
            )
        try:
            for chunk in chunks(lines):
                self.stream.write(chunk)
                self.stream.flush()
        except (OSError, ValueError):  # stderr closed: nothing to do about it
            pass

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread."""
        if not self._thread.is_alive():
            return
        try:
            self.queue.put(None, timeout=timeout)  # behind every record queued so far
        except queue.Full:
            return
        self._thread.join(timeout)


def chunks(lines: list[str], limit: int = WRITE_MAX) -> Iterator[str]:
    """Whole lines joined into writes of at most `limit` bytes (a longer line goes alone).

    Several workers share one stderr, often a pipe: a write of up to PIPE_BUF bytes
    reaches it whole, so lines of two processes never interleave mid-line."""
    buf: list[str] = []
    size = 0
    for line in lines:
        n = len(line.encode()) + 1
        if buf and size + n > limit:
            yield "".join(buf)
            buf, size = [], 0
        buf.append(line + "\n")
        size += n
    if buf:
        yield "".join(buf)


_writer: LogWriter | None = None


def shutdown() -> None:
    """Flush the log: everything logged before this call is written when it returns."""
    global _writer
    writer, _writer = _writer, None
    if writer is not None:
        logging.getLogger().handlers[:] = [_direct_handler()]  # late lines, e.g. at exit, go straight out
        writer.close()


def _direct_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    return handler


def setup(level: str) -> None:
    global _writer
    shutdown()
    _writer = LogWriter(sys.stderr, JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [QueuedHandler(_writer)]
    root.setLevel(level.upper())
    # aiohttp's own access logger is replaced by ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    quiet_parser_refusals()


atexit.register(shutdown)


class ParserRefusals(logging.Filter):
    """aiohttp logs each request its HTTP parser refuses (a line too long, a bad header) at
    ERROR with a traceback and the offending bytes, which may hold a credential. That is
    the client's error, answered 400: one INFO line naming the kind, nothing of the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 400) < 500:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "refused a malformed request: %s", (type(exc).__name__,)
            record.exc_info, record.exc_text = None, None
        return True


def quiet_parser_refusals() -> None:
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ParserRefusals) for f in server.filters):
        server.addFilter(ParserRefusals())


CLIENT_CLOSED = 499
# PullContext.aborted reasons that are the client's doing.
CLIENT_ABORTS = ("client", "slow")


def client_gone(request: web.BaseRequest) -> bool:
    """The client's connection is closed or closing: nothing more can reach it."""
    transport = request.transport
    return transport is None or transport.is_closing()


def reported_status(status: int, c: Any, client_left: bool) -> int:
    """The status to log and count: 499 when the client left before its answer was complete."""
    aborted = getattr(c, "aborted", None)
    if aborted is not None:
        return CLIENT_CLOSED if aborted in CLIENT_ABORTS else status
    return CLIENT_CLOSED if client_left else status
