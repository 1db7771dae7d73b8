"""The engine: a restart continues the active session (or, after damage, opens the
next); one engine a data directory."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tickertape.errors import StoreError
from tickertape.server.engine import Engine
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability
from tickertape.store.opening import verify
from tickertape.store.recovery import Recovery

from engine_support import run


def test_a_restart_continues_the_session_and_its_numbering(tmp_path: Path) -> None:
    ids: list[str] = []

    async def first(engine: Engine) -> None:
        ids.append(engine.session_id)
        await engine.publish_many([b"a", b"b", b"c"])

    async def second(engine: Engine) -> None:
        ids.append(engine.session_id)
        assert engine.next_seq == 4
        assert await engine.publish(b"d") == 4

    run(Durability.BATCH, first, tmp_path)
    run(Durability.BATCH, second, tmp_path)
    assert ids[0] == ids[1]


def test_a_restart_after_damage_that_cut_published_messages_opens_the_next_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Messages 3..4 were published, then damaged on disk. Numbering on from 3 would give
    their numbers to other messages: the restart ends the session (its intact prefix is
    still there) and publishes into the next one, from 1, saying why at ERROR."""
    caplog.set_level(logging.INFO)
    ids: list[str] = []

    async def first(engine: Engine) -> None:
        ids.append(engine.session_id)
        await engine.publish_many([b"a", b"b"])
        await engine.publish_many([b"c", b"d"])

    async def second(engine: Engine) -> None:
        ids.append(engine.session_id)
        assert engine.next_seq == 1
        assert await engine.publish(b"e") == 1

    run(Durability.BATCH, first, tmp_path)
    damaged = tmp_path / ids[0]
    log_bytes = bytearray((damaged / "log").read_bytes())
    log_bytes[-1] ^= 0x01  # the last payload byte of the second batch
    (damaged / "log").write_bytes(bytes(log_bytes))
    run(Durability.BATCH, second, tmp_path)

    assert ids[1] == ids[0][:-2] + "02"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"session {ids[0]} was damaged: messages 3..4 were cut; it is ended and session "
        f"{ids[1]} opened so that no number is reused"
    ]
    assert any(f"session {ids[1]} open at " in r.getMessage() for r in caplog.records)
    assert (damaged / "ended").exists()
    assert verify(damaged) == Recovery(messages=2, batches=1, vouched=2)
    assert verify(tmp_path / ids[1]) == Recovery(messages=1, batches=1, vouched=1)


def test_a_restart_after_a_torn_unindexed_tail_continues_the_session(tmp_path: Path) -> None:
    """A crash between the log write and the index write: the batch was never published
    (nor acknowledged), so it is set aside, and the session goes on from the last
    batch an index record vouches for."""
    ids: list[str] = []

    async def first(engine: Engine) -> None:
        ids.append(engine.session_id)
        await engine.publish_many([b"a", b"b"])

    async def second(engine: Engine) -> None:
        ids.append(engine.session_id)
        assert engine.next_seq == 3  # "c" was whole, but nothing vouches for it
        assert await engine.publish(b"e") == 3

    run(Durability.BATCH, first, tmp_path)
    with open(tmp_path / ids[0] / "log", "ab") as f:
        f.write(b"\x00\x02Sc\x00\x02S")  # "c" whole, "d" torn; no index record
    run(Durability.BATCH, second, tmp_path)
    assert ids[0] == ids[1]
    assert not (tmp_path / ids[0] / "ended").exists()
    assert (tmp_path / ids[0] / "log.cut-8").read_bytes() == b"\x00\x02Sc\x00\x02S"


def test_a_second_engine_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        first = Engine(Catalogue(tmp_path, Durability.NONE))
        await first.start()
        try:
            second = Engine(Catalogue(tmp_path, Durability.NONE))
            with pytest.raises(StoreError, match=r"is in use by tickertape process \d+"):
                await second.start()
        finally:
            await first.close()
        again = Engine(Catalogue(tmp_path, Durability.NONE))
        await again.start()  # the lock went with the first
        await again.close()

    asyncio.run(main())
