"""The session roller: what an end promises is durable before the end is."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tickertape.server.engine import Engine
from tickertape.store.layout import INDEX_FILE
from tickertape.store.log import Durability

from engine_support import run


@pytest.mark.parametrize("durability", list(Durability), ids=lambda d: d.value)
def test_an_end_syncs_the_log_and_index_before_its_ended_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: Durability
) -> None:
    """What an end promises (the session's messages, and the checksums that vouch for
    them) is on stable storage before the end is: whatever the durability policy."""
    synced: list[str] = []

    def spy(real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            real(fd)
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))

        return sync

    async def scenario(engine: Engine) -> None:
        ended = engine.session_id
        await engine.publish_many([b"a", b"b"])
        monkeypatch.setattr(os, "fdatasync", spy(os.fdatasync))
        monkeypatch.setattr(os, "fsync", spy(os.fsync))
        await engine.end_session()
        monkeypatch.undo()
        directory = tmp_path / ended
        marker = synced.index(str(directory / "ended"))
        assert str(directory / "log") in synced[:marker]
        assert str(directory / INDEX_FILE) in synced[:marker]

    run(durability, scenario, tmp_path)
