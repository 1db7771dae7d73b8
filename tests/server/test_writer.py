"""The session writer: persist, then publish; group commit; a failed write pauses
publishing, said clearly, and the next publish after the delay tries again."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from itertools import accumulate
from pathlib import Path

import pytest

from tickertape.errors import LocalProtocolError, StoreError
from tickertape.server.engine import Engine
from tickertape.server.writer import PublishFailed, WriterConfig
from tickertape.store.catalogue import Catalogue
from tickertape.store.layout import INDEX_FILE
from tickertape.store.log import Durability, SessionLog
from tickertape.store.opening import verify
from tickertape.store.recovery import Recovery
from tickertape.wire.soupbintcp import MAX_PAYLOAD

from engine_support import Recorder, run
from support import FullDisk, JumpingLoop

REAL_TIMEOUT = 10.0


def index_records(engine: Engine) -> int:
    return (engine.session_log.directory / INDEX_FILE).stat().st_size // 32


def test_publish_returns_sequence_numbers_once_persisted(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        assert engine.next_assigned == 1
        assert await engine.publish(b"one") == 1
        assert await engine.publish_many([b"two", b"three"]) == 2
        assert engine.next_seq == 4
        # durable and readable before publish returned
        data, count = engine.session_log.read(1, 1 << 20)
        assert count == 3
        assert data == b"\x00\x04Sone\x00\x04Stwo\x00\x06Sthree"

    run(Durability.BATCH, scenario, tmp_path)


def test_concurrent_publishers_share_one_sync_per_batch(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        firsts = await asyncio.gather(*(engine.publish_many([b"x"] * 10) for _ in range(50)))
        assert sorted(firsts) == list(range(1, 501, 10))
        assert index_records(engine) < 50  # coalesced: group commit

    run(Durability.BATCH, scenario, tmp_path)


def test_always_syncs_every_publish_call_on_its_own(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        await asyncio.gather(*(engine.publish_many([b"x"] * 3) for _ in range(20)))
        assert index_records(engine) == 20

    run(Durability.ALWAYS, scenario, tmp_path)


def test_a_message_too_large_is_refused_and_publishing_goes_on(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        with pytest.raises(LocalProtocolError, match="at most 65534 bytes"):
            await engine.publish(b"x" * (MAX_PAYLOAD + 1))
        assert await engine.publish(b"x" * MAX_PAYLOAD) == 1

    run(Durability.BATCH, scenario, tmp_path)


def test_a_failed_write_fails_its_publishers_clearly_and_keeps_the_log_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = WriterConfig(durability=Durability.BATCH, publish_retry=0.0)
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        if data.startswith(b"\x00\x05Sfail"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    async def main() -> None:
        engine = Engine(Catalogue(tmp_path, Durability.BATCH), config)
        await engine.start()
        try:
            await engine.publish(b"good")
            monkeypatch.setattr(os, "write", full_disk)
            with pytest.raises(
                PublishFailed, match=r"^no space left on device writing session \d+'s log; "
            ):
                await engine.publish(b"fail")
            monkeypatch.setattr(os, "write", real_write)
            assert await engine.publish(b"later") == 2  # publishing resumes, no gap
        finally:
            await engine.close()

    asyncio.run(main())
    session = next(p for p in tmp_path.iterdir() if p.is_dir())
    with SessionLog.open(session, writable=False) as reopened:
        assert reopened.recovery.clean
        assert reopened.read(1, 100) == (b"\x00\x05Sgood\x00\x06Slater", 2)


def test_a_call_larger_than_a_batch_is_split_and_resolves_once_all_is_durable(
    tmp_path: Path,
) -> None:
    config = WriterConfig(durability=Durability.BATCH, max_batch_messages=100, max_batch_bytes=300)

    async def main() -> None:
        engine = Engine(Catalogue(tmp_path, Durability.BATCH), config)
        await engine.start()
        live = Recorder(1)
        engine.stream.go_live(live)
        try:
            small = asyncio.ensure_future(engine.publish_many([b"s"] * 3))
            big = asyncio.ensure_future(engine.publish_many([b"%05d" % n for n in range(1000)]))
            after = asyncio.ensure_future(engine.publish(b"after"))
            assert await small == 1
            assert await big == 4
            assert await after == 1004
            # no batch above its limits: 100 messages, and 300 bytes of payload (60 here)
            assert max(count for _, count in live.batches) <= 100
            assert max(live.payload_bytes) == 300
            assert len(live.batches) >= 1000 // 60
            assert sum(count for _, count in live.batches) == 1004
            assert [first for first, _ in live.batches] == list(
                accumulate([1] + [count for _, count in live.batches[:-1]])
            )
        finally:
            await engine.close()

    asyncio.run(main())


def test_held_back_publishers_are_told_when_publishing_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = WriterConfig(durability=Durability.BATCH, max_queued_messages=2)
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        if b"Sfull" in data:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    async def main() -> None:
        engine = Engine(Catalogue(tmp_path, Durability.BATCH), config)
        await engine.start()
        monkeypatch.setattr(os, "write", full_disk)
        try:
            calls = [asyncio.ensure_future(engine.publish(b"full")) for _ in range(12)]
            results = await asyncio.wait_for(
                asyncio.gather(*calls, return_exceptions=True), REAL_TIMEOUT
            )
            assert all(isinstance(r, StoreError) for r in results), results
        finally:
            monkeypatch.setattr(os, "write", real_write)
            await engine.close()

    asyncio.run(main())


def test_held_back_publishers_are_told_when_the_engine_closes(tmp_path: Path) -> None:
    config = WriterConfig(durability=Durability.BATCH, max_queued_messages=2)

    async def main() -> None:
        engine = Engine(Catalogue(tmp_path, Durability.BATCH), config)
        await engine.start()
        calls = [asyncio.ensure_future(engine.publish(b"x")) for _ in range(12)]
        await asyncio.sleep(0)
        await engine.close()
        results = await asyncio.wait_for(
            asyncio.gather(*calls, return_exceptions=True), REAL_TIMEOUT
        )
        published = [r for r in results if isinstance(r, int)]
        refused = [r for r in results if isinstance(r, StoreError)]
        assert len(published) + len(refused) == 12
        assert sorted(published) == list(range(1, len(published) + 1))
        assert all("shutting down" in str(r) for r in refused)

    asyncio.run(main())


def test_messages_must_be_bytes(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        with pytest.raises(TypeError, match="as bytes"):
            await engine.publish("text")  # type: ignore[arg-type]
        assert await engine.publish(b"bytes") == 1

    run(Durability.NONE, scenario, tmp_path)


def test_a_server_that_multicasts_refuses_what_moldudp64_cannot_carry(tmp_path: Path) -> None:
    config = WriterConfig(durability=Durability.NONE, max_message=1450)

    async def main() -> None:
        engine = Engine(Catalogue(tmp_path, Durability.NONE), config)
        await engine.start()
        try:
            with pytest.raises(LocalProtocolError, match="configured for at most 1450 bytes"):
                await engine.publish(b"x" * 1451)
            assert await engine.publish(b"x" * 1450) == 1
        finally:
            await engine.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------- a full disk

RETRY = 60.0
"""The engine's retry delay in these tests: far longer than they take, so that only
the loop's clock jumping (:class:`JumpingLoop`) lets a retry happen."""


def run_jumping(
    tmp_path: Path,
    scenario: Callable[[Engine, JumpingLoop], Awaitable[None]],
    config: WriterConfig | None = None,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, JumpingLoop)
        engine = Engine(
            Catalogue(tmp_path, Durability.BATCH),
            config
            or WriterConfig(
                durability=Durability.BATCH, publish_retry=RETRY, publish_retry_max=8 * RETRY
            ),
        )
        await engine.start()
        try:
            # On the loop's clock, which jumps: a bound far beyond the jumps.
            await asyncio.wait_for(scenario(engine, loop), 100 * RETRY)
        finally:
            await engine.close()

    with asyncio.Runner(loop_factory=JumpingLoop) as runner:
        runner.run(main())


async def settle() -> None:
    """Let every task that can run, run (the writer's thread included)."""
    for _ in range(20):
        await asyncio.sleep(0.001)


def engine_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "tickertape.server.writer" and r.levelno == level
    ]


def test_a_failed_write_pauses_publishing_until_a_publish_after_the_delay_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tickertape.server.writer")

    async def scenario(engine: Engine, loop: JumpingLoop) -> None:
        assert await engine.publish(b"good") == 1
        live = Recorder(2)
        assert engine.stream.go_live(live)
        disk = FullDisk(monkeypatch)
        failed = await asyncio.gather(
            engine.publish(b"fail"),
            engine.publish_many([b"fail", b"more"]),
            engine.publish_many([b"and", b"more"]),
            return_exceptions=True,
        )
        reason = f"no space left on device writing session {engine.session_id}'s log"
        for error in failed:
            assert isinstance(error, PublishFailed), error
            assert str(error) == (
                f"{reason}; publishing is paused, and the next publish tries again in 60 s"
            )
            assert error.published == 0
            assert isinstance(error.__cause__, StoreError)  # from the log...
            assert isinstance(error.__cause__.__cause__, OSError)  # ...from the system
            assert error.__cause__.__cause__.errno == errno.ENOSPC
        assert engine.publishing_error == reason
        # The failed messages got no numbers.
        assert (engine.next_seq, engine.next_assigned) == (2, 2)
        errors = engine_records(caplog, logging.ERROR)
        assert len(errors) == 1, errors  # once, not once per message or call
        assert "publishing paused: " + reason in errors[0]
        assert "5 messages (3 publish calls) were not published" in errors[0]

        # Within the delay a publish waits: the full disk is not hammered.
        later = asyncio.ensure_future(engine.publish(b"later"))
        await settle()
        assert not later.done()
        disk.full = False  # room again
        loop.advance(RETRY)
        assert await later == 2
        assert engine.publishing_error is None
        resumed = engine_records(caplog, logging.WARNING)
        assert any("publishing resumed at sequence 2" in m for m in resumed), resumed
        assert await engine.publish(b"and on") == 3
        # The live subscriber saw nothing of the failure, and goes on.
        assert live.batches == [(2, 1), (3, 1)]
        assert live.data == b"\x00\x06Slater\x00\x07Sand on"
        assert engine.session_log.read(1, 1000)[1] == 3

    run_jumping(tmp_path, scenario)
    assert verify_session(tmp_path).clean


def verify_session(data: Path) -> Recovery:
    session = next(p for p in data.iterdir() if p.is_dir())
    return verify(session)


def test_while_writes_keep_failing_the_delay_doubles_and_is_logged_as_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tickertape.server.writer")

    async def scenario(engine: Engine, loop: JumpingLoop) -> None:
        disk = FullDisk(monkeypatch)
        with pytest.raises(PublishFailed, match=r"tries again in 60 s$"):
            await engine.publish(b"fail 1")
        loop.advance(RETRY)
        with pytest.raises(PublishFailed, match=r"tries again in 120 s$"):
            await engine.publish(b"fail 2")
        assert len(engine_records(caplog, logging.ERROR)) == 1
        still = engine_records(caplog, logging.WARNING)
        assert len(still) == 1 and "publishing still paused" in still[0], still
        attempt = asyncio.ensure_future(engine.publish(b"fail 3"))
        loop.advance(RETRY)  # half the delay
        await settle()
        assert not attempt.done()
        disk.full = False
        loop.advance(RETRY)
        assert await attempt == 1  # the first message ever written is number 1
        assert engine.publishing_error is None
        disk.full = True  # a later failure starts again from the first delay
        with pytest.raises(PublishFailed, match=r"tries again in 60 s$"):
            await engine.publish(b"fail 4")
        assert len(engine_records(caplog, logging.ERROR)) == 2

    run_jumping(tmp_path, scenario)


def test_a_call_larger_than_a_batch_learns_how_much_of_it_was_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = WriterConfig(
        durability=Durability.BATCH,
        max_batch_messages=10,
        publish_retry=RETRY,
        publish_retry_max=8 * RETRY,
    )

    async def scenario(engine: Engine, loop: JumpingLoop) -> None:
        assert await engine.publish(b"before") == 1
        disk = FullDisk(monkeypatch, marker=b"Sm10")  # the call's second batch
        with pytest.raises(PublishFailed) as failed:
            await engine.publish_many([b"m%02d" % n for n in range(25)])
        assert failed.value.published == 10
        assert failed.value.first_seq == 2
        assert str(failed.value).startswith(
            "the first 10 of these 25 messages were published (sequence 2..11), the rest "
            f"not: no space left on device writing session {engine.session_id}'s log"
        )
        assert (engine.next_seq, engine.next_assigned) == (12, 12)
        disk.full = False
        loop.advance(RETRY)
        assert await engine.publish(b"next") == 12
        data, count = engine.session_log.read(1, 1 << 20)
        assert count == 12
        assert data.endswith(b"\x00\x04Sm09\x00\x05Snext")

    run_jumping(tmp_path, scenario, config)


def test_publishers_held_by_the_delay_are_told_when_the_engine_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        engine = Engine(
            Catalogue(tmp_path, Durability.BATCH),
            WriterConfig(durability=Durability.BATCH, publish_retry=RETRY, publish_retry_max=RETRY),
        )
        await engine.start()
        FullDisk(monkeypatch)
        with pytest.raises(PublishFailed):
            await engine.publish(b"fail")
        held = asyncio.ensure_future(engine.publish(b"held"))
        await settle()
        assert not held.done()
        await engine.close()
        with pytest.raises(StoreError, match="shutting down"):
            await asyncio.wait_for(held, REAL_TIMEOUT)

    asyncio.run(main())
