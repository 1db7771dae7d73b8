"""The publishing convention's two ends, sans I/O: PublisherInbox (server) and
PublisherAcks (client)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickertape.errors import RemoteProtocolError
from tickertape.protocol.publishing import PublisherAcks, PublisherInbox
from tickertape.wire.publishing import END_OF_SESSION_MARKER as END
from tickertape.wire.publishing import Ack


def drain(inbox: PublisherInbox) -> list[tuple[list[bytes], bool]]:
    taken = []
    while inbox.waiting:
        taken.append(inbox.take())
    return taken


def test_runs_come_back_as_one_batch_in_arrival_order() -> None:
    inbox = PublisherInbox(100, 1000)
    assert not inbox.receive([b"a", b"b"])
    assert not inbox.receive([b"c"])
    assert inbox.unpublished == 3
    assert drain(inbox) == [([b"a", b"b", b"c"], False)]
    assert inbox.take() == ([], False)


def test_a_marker_cuts_the_batch_and_ends_the_session_after_what_came_before() -> None:
    inbox = PublisherInbox(100, 1000)
    inbox.receive([b"a", END, b"b"])
    inbox.receive([END])
    inbox.receive([END, b"c"])
    assert drain(inbox) == [([b"a"], True), ([b"b"], True), ([], True), ([b"c"], False)]


def test_full_past_either_bound_and_not_once_taken() -> None:
    by_count = PublisherInbox(3, 1000)
    assert not by_count.receive([b"a", b"b"])
    assert by_count.receive([b"c"])
    by_count.take()
    assert not by_count.full
    by_bytes = PublisherInbox(100, 10)
    assert by_bytes.receive([b"x" * 10])
    assert by_bytes.full


def test_bytes_count_only_what_is_left_after_a_cut() -> None:
    inbox = PublisherInbox(100, 10)
    inbox.receive([b"x" * 6, END, b"y" * 5])
    assert inbox.full
    assert inbox.take() == ([b"x" * 6], True)
    assert not inbox.full  # 5 bytes wait
    assert inbox.receive([b"z" * 5])


def test_acknowledgements_count_and_name_the_last_message() -> None:
    inbox = PublisherInbox(100, 1000)
    assert Ack.decode(inbox.published(2, "S1", 7)) == Ack(2, "S1", 7)
    assert Ack.decode(inbox.published(3, "S1", 10)) == Ack(5, "S1", 10)
    assert Ack.decode(inbox.ended("S1")) == Ack(5, "S1", 0)
    assert inbox.acked == 5


@given(
    st.lists(st.lists(st.sampled_from([b"a", b"bb", b"", END]), max_size=8), max_size=8),
    st.data(),
)
def test_any_runs_and_any_takes_keep_order_and_ends(
    runs: list[list[bytes]], data: st.DataObject
) -> None:
    """Whatever the runs and whenever it is drained, the batches joined with their
    session ends are the stream as sent."""
    inbox = PublisherInbox(10**6, 10**9)
    rebuilt: list[bytes] = []
    for run in runs:
        inbox.receive(run)
        if data.draw(st.booleans()):
            for batch, end in drain(inbox):
                rebuilt += batch + ([END] if end else [])
    for batch, end in drain(inbox):
        rebuilt += batch + ([END] if end else [])
    assert rebuilt == [payload for run in runs for payload in run]


def test_client_counts_sent_markers_and_acks() -> None:
    acks = PublisherAcks()
    acks.sending([b"a", b"b", END])
    assert (acks.sent, acks.ends_sent, acks.acked, acks.settled) == (2, 1, 0, False)
    assert acks.received(b"ACK 2 S1 9") == Ack(2, "S1", 9)
    assert not acks.settled  # the session end is not confirmed yet
    assert acks.received(b"ACK 2 S1 0") == Ack(2, "S1", 0)
    assert acks.settled
    assert acks.ended == ["S1"]
    assert acks.last_ack == Ack(2, "S1", 9)  # a session end is no message ack


def test_client_refuses_what_is_not_an_ack() -> None:
    with pytest.raises(RemoteProtocolError):
        PublisherAcks().received(b"hello")
