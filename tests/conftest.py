"""Fixtures for every test."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """A test that runs ``tickertape.cli.main`` in this process configures logging as the
    command does (the root logger's handlers and level, quieter store loggers): put it
    back, so that the next test's ``caplog`` sees what it expects."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = {
        name: logger.level
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and name.startswith("tickertape")
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and name.startswith("tickertape"):
            logger.setLevel(loggers.get(name, logging.NOTSET))
