"""Fixtures for every test, and the ``system`` marker on every test in tests/system/."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

SYSTEM = Path(__file__).resolve().parent / "system"
"""The system tests' folder: crash and kill loops, hostile clients, load, network
namespaces, third-party peers, the browser, and every test that runs ``tickertape``
commands as subprocesses (the CLI, the README's snippets, relays of relays).
``pytest -m "not system"`` leaves them out."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/system/ ``system`` (before ``-m`` selects)."""
    for item in items:
        if item.path.is_relative_to(SYSTEM):
            item.add_marker(pytest.mark.system)


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
