"""The publishing convention's two ends, sans I/O (the bytes: :mod:`tickertape.wire.publishing`).

:class:`PublisherInbox` is the server's end of one publisher connection: it takes the
runs of messages the connection hands out (:class:`~tickertape.protocol.server.MessagesReceived`),
notes where END OF SESSION markers fall among them, hands them back as batches for the
engine in arrival order (:meth:`~PublisherInbox.take`), says when so much is waiting that
the connection should stop reading, and makes the acknowledgements.

:class:`PublisherAcks` is the client's end: it counts what was sent and reads the
server's acknowledgements.

Nothing here reads a clock, touches a socket or awaits; nothing here publishes (the
asyncio side, :mod:`tickertape.sources.publisher` and :mod:`tickertape.client.publisher`,
does).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from tickertape.wire.publishing import END_OF_SESSION_MARKER, Ack

__all__ = ["PublisherAcks", "PublisherInbox"]


class PublisherInbox:
    """What one publisher connection sent and the engine has not been handed yet.

    ``max_messages`` and ``max_bytes`` bound it: past either, :meth:`receive` says
    the connection should stop reading until :meth:`take` makes room.
    """

    __slots__ = ("_bytes", "_ends", "_pending", "acked", "max_bytes", "max_messages")

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._pending: list[bytes] = []
        self._bytes = 0
        self._ends: deque[int] = deque()  # where, in _pending, the publisher ended sessions
        self.acked = 0
        """Messages acknowledged so far (see :meth:`published`)."""

    def receive(self, payloads: list[bytes]) -> bool:
        """Take a run of messages, in arrival order; a payload that is exactly the END OF
        SESSION marker ends the session after what came before it. Returns whether so
        much is waiting now that the connection should stop reading."""
        if END_OF_SESSION_MARKER in payloads:
            for payload in payloads:
                if payload == END_OF_SESSION_MARKER:
                    self._ends.append(len(self._pending))  # after what came before it
                else:
                    self._pending.append(payload)
                    self._bytes += len(payload)
        else:
            self._pending += payloads
            self._bytes += sum(map(len, payloads))
        return self.full

    @property
    def full(self) -> bool:
        """Whether the connection should stop reading."""
        return len(self._pending) >= self.max_messages or self._bytes >= self.max_bytes

    @property
    def waiting(self) -> bool:
        """Whether anything (messages, or a session end) waits for :meth:`take`."""
        return bool(self._pending or self._ends)

    @property
    def unpublished(self) -> int:
        """Messages waiting."""
        return len(self._pending)

    def take(self) -> tuple[list[bytes], bool]:
        """The messages to publish next, and whether the session is to end after them
        (then only those sent before the marker); ``([], False)`` when nothing waits."""
        ends = self._ends
        if ends and ends[0] <= len(self._pending):
            cut = ends.popleft()
            batch, self._pending = self._pending[:cut], self._pending[cut:]
            if ends:
                self._ends = deque(position - cut for position in ends)
            self._bytes = sum(map(len, self._pending))
            return batch, True
        batch, self._pending = self._pending, []
        self._bytes = 0
        return batch, False

    def published(self, count: int, session: str, last_seq: int) -> bytes:
        """``count`` more messages are durable, the last numbered ``last_seq`` in
        ``session``: the acknowledgement to send (an Unsequenced Data payload)."""
        self.acked += count
        return Ack(self.acked, session, last_seq).encode()

    def ended(self, session: str) -> bytes:
        """The publisher's END OF SESSION ended ``session``: the acknowledgement to send."""
        return Ack(self.acked, session, 0).encode()


class PublisherAcks:
    """A publishing client's count of what it sent and the server acknowledged."""

    __slots__ = ("ended", "ends_sent", "last_ack", "sent")

    def __init__(self) -> None:
        self.sent = 0
        """Messages sent so far (not counting END OF SESSION markers)."""
        self.ends_sent = 0
        """END OF SESSION markers sent so far."""
        self.ended: list[str] = []
        """The sessions this publisher's markers ended, as the server confirmed them."""
        self.last_ack: Ack | None = None

    @property
    def acked(self) -> int:
        """Messages the server has acknowledged as durable."""
        return self.last_ack.count if self.last_ack else 0

    @property
    def settled(self) -> bool:
        """Whether every message sent is acknowledged and every session end confirmed."""
        return self.acked >= self.sent and len(self.ended) >= self.ends_sent

    def sending(self, payloads: Sequence[bytes]) -> None:
        """Count messages about to be sent (markers among them apart)."""
        ends = payloads.count(END_OF_SESSION_MARKER)
        self.sent += len(payloads) - ends
        self.ends_sent += ends

    def received(self, payload: bytes) -> Ack:
        """An Unsequenced Data packet from the server: the acknowledgement it is, noted
        (sequence number 0: a session ended). Raises ``ProtocolError`` if it is none."""
        ack = Ack.decode(payload)
        if ack.seq == 0:
            self.ended.append(ack.session)
        else:
            self.last_ack = ack
        return ack
