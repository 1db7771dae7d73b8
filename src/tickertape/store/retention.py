"""What happens to closed sessions as they age: archived after N days, deleted after M.

A session's age is in days, from the date in its id to today: today's sessions are 0 days
old, yesterday's 1. An ended session is archived once it is ``archive_after_days`` old or
more, and deleted once it is ``delete_after_days`` old or more: 0 means every ended
session, today's too (as soon as it ends: the pass runs at start and after each roll).

Nothing is archived or deleted unless the operator configured it. The active session,
and any session not yet ended, are never touched.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass

from tickertape.errors import ConfigError, StoreError
from tickertape.store.archive import archive_session
from tickertape.store.catalogue import Catalogue
from tickertape.store.layout import ARCHIVE_FILE, DELETING_PREFIX, fsync_directory
from tickertape.text import plural

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Retention:
    """Ages in days past which an ended session is archived, or deleted; None: never."""

    archive_after_days: int | None = None
    delete_after_days: int | None = None

    def __post_init__(self) -> None:
        for name, days in (
            ("--archive-after", self.archive_after_days),
            ("--delete-after", self.delete_after_days),
        ):
            if days is not None and days < 0:
                raise ConfigError(f"{name} {days}: a number of days, 0 or more")

    @property
    def configured(self) -> bool:
        return self.archive_after_days is not None or self.delete_after_days is not None

    def describe(self) -> str:
        """The policy, in a sentence for the log."""
        if not self.configured:
            return (
                "ended sessions are kept as they are (nothing is archived or deleted: "
                "--archive-after and --delete-after)"
            )
        parts = [
            f"{verb} once {_age(days)}"
            for verb, days in (
                ("archived", self.archive_after_days),
                ("deleted", self.delete_after_days),
            )
            if days is not None
        ]
        return "ended sessions are " + ", and ".join(parts)


def _age(days: int) -> str:
    if days == 0:
        return "ended (today's too: 0 days)"
    return f"{days} day{'s' if days != 1 else ''} old or more"


def apply_retention(
    catalogue: Catalogue, today: dt.date, retention: Retention, keep: frozenset[str] = frozenset()
) -> list[str]:
    """Archive and delete ended sessions older than the policy allows; returns what was
    done, a line each. Blocking disk work: run it off the event loop."""
    done: list[str] = []
    for info in catalogue.sessions():
        if not info.ended or str(info.id) in keep:
            continue
        age = (today - info.id.day).days
        if retention.delete_after_days is not None and age >= retention.delete_after_days:
            # Renamed first, so that a crash midway leaves no half-deleted session that
            # could be served: the name is no longer a session id.
            doomed = info.path.with_name(f"{DELETING_PREFIX}{info.id}")
            info.path.rename(doomed)
            fsync_directory(catalogue.root)
            shutil.rmtree(doomed)
            fsync_directory(catalogue.root)
            done.append(f"deleted session {info.id} ({plural(age, 'day')} old)")
        elif (
            retention.archive_after_days is not None
            and age >= retention.archive_after_days
            and not (info.path / ARCHIVE_FILE).exists()
        ):
            try:
                result = archive_session(info.path)
            except StoreError as exc:
                log.error("session %s is due for archiving but cannot be: %s", info.id, exc)
                continue
            done.append(
                f"archived session {info.id} ({plural(age, 'day')} old): "
                f"{result.original_bytes} bytes to {result.archived_bytes}"
            )
    for leftover in catalogue.root.glob(f"{DELETING_PREFIX}*"):
        if leftover.is_symlink() or not leftover.is_dir():
            continue  # not what a deletion leaves: never followed
        shutil.rmtree(leftover)  # a deletion a crash interrupted
        fsync_directory(catalogue.root)
    for line in done:
        log.info("%s", line)
    return done
