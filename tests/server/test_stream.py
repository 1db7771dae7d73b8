"""The session stream: the live set gets each published batch, encoded once; a
cursor behind the tail is refused; a failing subscriber is dropped, the others go on;
at the end of a session every live cursor is told, then the stream moves on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tickertape.clock import SystemClock
from tickertape.errors import StoreError
from tickertape.server.engine import Engine
from tickertape.server.stream import SessionStream
from tickertape.store.log import Durability, SessionLog
from tickertape.store.sessionid import SessionId

from engine_support import Recorder, run


def test_live_cursors_get_each_batch_once_encoded(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        await engine.publish(b"before")
        behind = Recorder(1)
        assert not engine.stream.go_live(behind)  # behind the tail: must read the log first
        live = Recorder(engine.next_seq)
        assert engine.stream.go_live(live)
        await engine.publish_many([b"a", b"b"])
        assert live.batches == [(2, 2)]
        assert live.data == b"\x00\x02Sa\x00\x02Sb"
        engine.stream.leave(live)
        await engine.publish(b"c")
        assert live.batches == [(2, 2)]

    run(Durability.NONE, scenario, tmp_path)


class Broken(Recorder):
    aborted = False

    def deliver(self, data: bytes, first_seq: int, count: int, now: float) -> None:
        raise RuntimeError("broken subscriber")

    def abort(self) -> None:
        self.aborted = True


def test_a_failing_subscriber_is_dropped_and_the_others_go_on(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        broken, good = Broken(1), Recorder(1)
        engine.stream.go_live(broken)
        engine.stream.go_live(good)
        assert await engine.publish(b"a") == 1
        assert await engine.publish(b"b") == 2
        assert broken.aborted
        assert good.batches == [(1, 1), (2, 1)]
        assert engine.stream.live_count == 1

    run(Durability.NONE, scenario, tmp_path)


class Ending(Recorder):
    """A live cursor that records End of Session."""

    ended = False

    def session_ended(self) -> None:
        self.ended = True


def test_at_a_switch_every_live_cursor_is_told_then_the_stream_follows_the_next_session(
    tmp_path: Path,
) -> None:
    first, second = SessionId.parse("2026112901"), SessionId.parse("2026112902")
    stream = SessionStream(SystemClock(), owner="test")
    with (
        SessionLog.open(tmp_path / str(first), create=True) as first_log,
        SessionLog.open(tmp_path / str(second), create=True) as second_log,
    ):
        stream.open(first, first_log)
        stream.fan_out(1, 2, b"\x00\x02Sa\x00\x02Sb")  # the tail moves, with nobody live
        assert stream.next_seq == 3
        live, behind = Ending(3), Ending(1)
        assert stream.go_live(live)
        assert not stream.go_live(behind)
        handed: list[tuple[str, SessionLog, str]] = []
        stream.on_roll(lambda ended, log, next_id: handed.append((ended, log, next_id)))

        stream.switch(second, second_log)
        assert live.ended and not behind.ended
        assert (stream.session_id, stream.next_seq, stream.live_count) == (str(second), 1, 0)
        assert stream.is_active(second_log) and not stream.is_active(first_log)
        stream.hand_over(first, first_log)
        assert handed == [(str(first), first_log, str(second))]


def test_before_it_is_opened_the_stream_says_what_was_not_started() -> None:
    stream = SessionStream(SystemClock(), owner="engine")
    with pytest.raises(StoreError, match=r"^the engine has not been started$"):
        stream.session_id  # noqa: B018
