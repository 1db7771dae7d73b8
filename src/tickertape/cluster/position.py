"""How far a node has applied its cluster's journal, kept in its data directory
(``.cluster-position``), so that a node that comes back reads the journal from there.

The file names the journal too: a data directory is a copy of one cluster's sessions,
and a node started on another cluster's is refused. It is replaced whole (written,
synced, renamed): after a power loss it holds the old position or the new one, and a
position behind the log is harmless, since a node skips what its log already holds.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tickertape.errors import StoreError
from tickertape.store.layout import CLUSTER_POSITION_FILE

log = logging.getLogger(__name__)


class SavedPosition:
    """The position file of the data directory ``data``, for the journal ``stream``."""

    def __init__(self, data: Path, stream: str) -> None:
        self.path = data / CLUSTER_POSITION_FILE
        self.stream = stream
        self.saved = 0
        """The position last read or written."""

    def read(self) -> int:
        """The position saved (0 if none was); a :class:`StoreError` if the file cannot
        be read, or is another journal's."""
        try:
            saved = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        if not isinstance(saved, dict) or not isinstance(saved.get("position"), int):
            raise StoreError(f"{self.path} holds no journal position: {saved!r}")
        if saved.get("journal") != self.stream:
            raise StoreError(
                f"{self.path} is of journal {saved.get('journal')!r}, not {self.stream}: "
                "this data directory belongs to another cluster"
            )
        self.saved = int(saved["position"])
        return self.saved

    def save(self, position: int) -> None:
        """Save ``position`` if it moved; a failure is logged (the next save tries
        again), since the node can go on without it."""
        if position == self.saved:
            return
        temporary = self.path.with_name(self.path.name + ".new")
        try:
            with open(temporary, "w") as file:
                file.write(json.dumps({"journal": self.stream, "position": position}))
                file.flush()
                os.fsync(file.fileno())  # a power loss leaves the old file or this one
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("cannot save the journal position to %s: %s", self.path, exc)
            return
        self.saved = position


__all__ = ["SavedPosition"]
