"""The MoldUDP64 multicast publisher (and its sending thread), over real UDP sockets on
127.0.0.1: a unicast address stands in for the group. Timers are tested on an event loop
whose clock jumps (``support.JumpingLoop``). Also the command line's MoldUDP64 options."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from mold_support import (
    TIMEOUT,
    Receiver,
    mold_server,
    payloads,
    run_jumping,
    synchronous,
    turn,
)
from tickertape.cli.main import main
from tickertape.server.engine import Engine
from tickertape.server.moldudp64.publisher import parse_group
from tickertape.server.moldudp64.settings import PublisherConfig
from tickertape.wire.moldudp64 import MAX_DATAGRAM, MAX_MESSAGE, Downstream, Request

from support import JumpingLoop


@synchronous
async def test_every_published_message_goes_out_in_order_in_packets_that_fit(
    tmp_path: Path,
) -> None:
    rng = random.Random(5)
    sent: list[bytes] = []
    async with mold_server(tmp_path) as mold:
        for _ in range(30):
            batch = [
                bytes([rng.randrange(256)]) * rng.choice([1, 10, 100, 700, MAX_MESSAGE])
                for _ in range(rng.randrange(1, 200))
            ]
            await mold.engine.publish_many(batch)
            sent += batch
        got = await mold.messages(len(sent))
    assert [seq for seq, _ in got] == list(range(1, len(sent) + 1))
    assert [message for _, message in got] == sent
    assert max(mold.group.sizes) <= MAX_DATAGRAM
    assert max(mold.group.sizes) == MAX_DATAGRAM or any(
        size > MAX_DATAGRAM - 100 for size in mold.group.sizes
    )  # packets are filled, not one message each
    assert mold.publisher.stats.messages == len(sent)
    assert mold.publisher.stats.packets < len(sent)


@synchronous
async def test_the_publisher_joins_at_the_tail(tmp_path: Path) -> None:
    async def early(engine: Engine) -> None:
        await engine.publish_many(payloads(10))

    async with mold_server(tmp_path, before=early) as mold:
        first = await mold.group.packet()
        assert first.heartbeat and first.sequence == 11
        await mold.engine.publish_many(payloads(5, start=11))
        got = await mold.messages(15)
    assert [seq for seq, _ in got] == [11, 12, 13, 14, 15]
    assert [m for _, m in got] == payloads(5, start=11)


@synchronous
async def test_messages_too_long_for_a_packet_are_skipped_and_counted(tmp_path: Path) -> None:
    too_long = b"x" * (MAX_MESSAGE + 1)
    async with mold_server(tmp_path) as mold:
        await mold.engine.publish_many([b"one", too_long, b"three", b"y" * MAX_MESSAGE])
        packets: list[Downstream] = []
        while sum(len(p.messages) for p in packets) < 3:
            packet = await mold.group.packet()
            if packet.messages:
                packets.append(packet)
        assert [(p.sequence, p.messages) for p in packets] == [
            (1, (b"one",)),
            (3, (b"three",)),
            (4, (b"y" * MAX_MESSAGE,)),
        ]
        assert mold.publisher.stats.oversized == 1
        asker = Receiver()
        # A re-request cannot carry it either: no answer; one from 1 stops before it.
        asker.ask(mold.requests.port, Request(mold.session, 2, 1))
        answer = await asker.answer(mold.requests.port, Request(mold.session, 1, 10))
        assert (answer.sequence, answer.messages) == (1, (b"one",))
        answer = await asker.answer(mold.requests.port, Request(mold.session, 3, 10))
        assert (answer.sequence, answer.messages) == (3, (b"three",))
        assert mold.requests.stats.oversized == 1
        asker.close()


def test_a_heartbeat_after_each_second_with_nothing_sent(tmp_path: Path) -> None:
    async def scenario(loop: JumpingLoop) -> None:
        async with mold_server(tmp_path) as mold:
            await mold.publisher.flush()
            assert [(p.heartbeat, p.sequence) for p in mold.group.pending()] == [(True, 1)]
            await turn(loop, 1.0, mold)
            assert [(p.heartbeat, p.sequence) for p in mold.group.pending()] == [(True, 1)]
            await turn(loop, 0.5, mold)
            assert mold.group.pending() == []
            await mold.engine.publish_many(payloads(3))
            await mold.publisher.flush()
            assert [p.sequence for p in mold.group.pending()] == [1]
            await turn(loop, 0.7, mold)  # 1.2 s after the last heartbeat, 0.7 s after data
            assert mold.group.pending() == []
            await turn(loop, 0.4, mold)
            assert [(p.heartbeat, p.sequence) for p in mold.group.pending()] == [(True, 4)]
            for _ in range(5):
                await turn(loop, 1.0, mold)
            assert [p.sequence for p in mold.group.pending()] == [4] * 5
            assert mold.publisher.stats.heartbeats == 8

    run_jumping(scenario)


def test_end_of_session_repeats_in_place_of_heartbeats_while_the_next_session_is_quiet(
    tmp_path: Path,
) -> None:
    async def scenario(loop: JumpingLoop) -> None:
        config = PublisherConfig("127.0.0.1", 0, eos_seconds=5.0)
        async with mold_server(tmp_path, config) as mold:
            ended = mold.session
            await mold.engine.publish_many(payloads(7))
            await mold.messages(7)
            await mold.engine.roll()
            following = mold.session
            assert following != ended
            await mold.publisher.flush()
            seen = [[(p.session, p.sequence, p.end_of_session) for p in mold.group.pending()]]
            for _ in range(7):
                await turn(loop, 1.0, mold)
                seen.append(
                    [(p.session, p.sequence, p.end_of_session) for p in mold.group.pending()]
                )
            # Once a second for 5 s in all, and nothing of the next session meanwhile;
            # then the next session's heartbeats.
            assert seen == [[(ended, 8, True)]] * 5 + [[(following, 1, False)]] * 3
            assert mold.publisher.stats.end_of_session == 5

    run_jumping(scenario)


def test_no_end_of_session_after_the_next_session_s_first_message(tmp_path: Path) -> None:
    """Receivers that take the session from every packet (some do) must never see an
    End of Session after the next session's first packet: they would take it for the
    end of the new session."""

    async def scenario(loop: JumpingLoop) -> None:
        config = PublisherConfig("127.0.0.1", 0, eos_seconds=5.0)
        async with mold_server(tmp_path, config) as mold:
            ended = mold.session
            await mold.engine.publish_many(payloads(7))
            await mold.messages(7)
            await mold.engine.roll()
            following = mold.session
            await turn(loop, 1.0, mold)  # one repeat while the next session is quiet
            await mold.engine.publish_many(payloads(2))
            await mold.publisher.flush()
            packets = [(p.session, p.sequence, p.end_of_session) for p in mold.group.pending()]
            assert packets == [(ended, 8, True), (ended, 8, True), (following, 1, False)]
            seen = []
            for _ in range(8):
                await turn(loop, 1.0, mold)
                seen += [(p.session, p.sequence, p.end_of_session) for p in mold.group.pending()]
            assert seen == [(following, 3, False)] * 8  # its heartbeats, nothing else
            assert mold.publisher.stats.end_of_session == 2

    run_jumping(scenario)


@synchronous
async def test_a_sending_thread_too_far_behind_drops_whole_batches(tmp_path: Path) -> None:
    config = PublisherConfig("127.0.0.1", 0, max_queued_bytes=10_000)
    async with mold_server(tmp_path, config) as mold:
        held = threading.Event()
        sender = mold.publisher.sender
        assert sender is not None

        def block() -> None:
            held.wait(TIMEOUT)

        sender.put(block)
        for start in range(1, 301, 30):
            await mold.engine.publish_many(payloads(30, 100, start))  # ~3 KiB a batch
        assert mold.publisher.stats.dropped_batches > 0
        dropped = mold.publisher.stats.dropped_messages
        held.set()
        await mold.engine.publish_many(payloads(1, 100, 301))
        await mold.publisher.flush()
        got = {
            packet.sequence + i
            for packet in mold.group.pending()
            for i in range(len(packet.messages))
        }
        assert 301 in got
        assert len(got) == 301 - dropped
        assert mold.publisher.next_seq == 302


# ---------------------------------------------------------------------------- command line


def test_command_line_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_group("239.1.1.1:30001") == ("239.1.1.1", 30001)
    for bad in ["239.1.1.1", "nowhere:1", "239.1.1.1:0", "239.1.1.1:x", ":1"]:
        with pytest.raises(ValueError, match=r"\S"):
            parse_group(bad)
    for argv in (
        ["serve", "--mold", "239.1.1.1"],
        ["serve", "--mold-ttl", "3"],
        ["serve", "--mold-iface", "127.0.0.1"],
        ["serve", "--mold", "239.1.1.1:1", "--mold-eos-seconds", "-1"],
        ["serve", "--mold-request-rate", "10"],
        ["serve", "--mold", "239.1.1.1:1", "--mold-iface", "eth0"],
        ["serve", "--mold-request", "0", "--mold-request-rate", "0"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    assert "--mold" in capsys.readouterr().err
