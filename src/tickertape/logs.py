"""Where ``serve`` logs and how: ``--log-level``, ``--log-format text|json`` and
``--log-file PATH`` (reopened on SIGHUP, for log rotation).

The JSON format is one object a line: ``timestamp`` (UTC, ISO 8601 with its zone),
``level``, ``logger``, ``message``, and the structured fields a log call passes with
``extra=``, where it knows them: ``session``, ``sequence``, ``client`` (the peer's
address) and ``user``. An exception's traceback goes in ``exception``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Final

LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("text", "json")
FIELDS: Final = ("session", "sequence", "client", "user")
"""The structured fields a log call may pass with ``extra=``: the JSON format has them
as fields (the text format has them in its message already)."""
TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def add_log_options(parser: argparse.ArgumentParser) -> None:
    """``--log-level``, ``--log-format`` and ``--log-file``."""
    group = parser.add_argument_group("logging")
    group.add_argument(
        "--log-level",
        choices=LEVELS,
        metavar="LEVEL",
        help="the least severe messages logged: debug, info, warning or error "
        "(default: info; debug with --verbose)",
    )
    group.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text (one line for a person) or json (one JSON object a line, with "
        "timestamp, level, logger, message and, where known, session, sequence, client "
        "and user) (%(default)s)",
    )
    group.add_argument(
        "--log-file",
        type=Path,
        metavar="PATH",
        help="append the log to PATH instead of stderr; reopened on SIGHUP, so that "
        "logrotate can move it away first",
    )


class JsonFormatter(logging.Formatter):
    """One JSON object a line (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, dt.UTC)
        entry: dict[str, object] = {
            "timestamp": stamp.isoformat(timespec="microseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                entry[field] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


class ReopeningFileHandler(logging.handlers.WatchedFileHandler):
    """A log file that :meth:`reopen` opens again by its name (after ``mv``, the new
    file), besides noticing by itself when it was moved or deleted."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.flush()
                self.stream.close()
            self.stream = self._open()
            self._statstream()  # what WatchedFileHandler compares the name against
        finally:
            self.release()


def setup_logging(
    level: str | None,
    log_format: str = "text",
    log_file: Path | None = None,
    *,
    verbose: bool = False,
    quiet: bool = False,
) -> None:
    """Configure the root logger: ``level`` wins over ``verbose`` (debug) and ``quiet``
    (errors only). A log file that cannot be opened raises OSError."""
    if level is not None:
        number = getattr(logging, level.upper())
    else:
        number = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    handler: logging.Handler
    if log_file is not None:
        handler = ReopeningFileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)


def reopen_log_files() -> list[str]:
    """Open every log file again by its name (on SIGHUP); the files reopened."""
    reopened = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ReopeningFileHandler):
            handler.reopen()
            reopened.append(handler.baseFilename)
    return reopened
