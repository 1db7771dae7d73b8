"""The MoldUDP64 endpoints of a server (``serve --mold``, ``--mold-request``).

- :mod:`.settings`: what each endpoint is configured with and what it counts.
- :mod:`.publisher`: :class:`~.publisher.MoldPublisher`, the multicast publisher, a cursor
  at the engine's tail.
- :mod:`.sender`: the publisher's sending thread, which packs batches into datagrams.
- :mod:`.rerequest`: :class:`~.rerequest.MoldRequestServer`, the design's Rerequest for
  MoldUDP64: answers re-requests by unicast, from any session on disk.
- :mod:`.windows`: the re-request server's cache of framed message blocks read from logs.
- :mod:`.budget`: the re-request server's per-requester budget (token buckets).
- :mod:`.throttled`: warnings logged at most once in a while.

The packets themselves are :mod:`tickertape.wire.moldudp64`; the receiving side is
:mod:`tickertape.protocol.moldudp64` and :mod:`tickertape.client.moldudp64`. Nothing is
re-exported here: import from the module that holds a name.
"""
