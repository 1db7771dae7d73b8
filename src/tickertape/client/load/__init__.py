"""``tickertape bench``'s workload: publishers and subscribers against a running server,
each in a process of its own, counting, checking and timing what they send and receive.

N publishers (tickertape's :class:`~tickertape.client.publisher.Publisher`, ``send_many`` of
``batch`` messages at a time) publish ``count`` messages between them, or publish for
``duration`` seconds; M subscribers (:class:`~tickertape.client.soupbintcp.Subscription`,
``batches()``) log in live (from 0, before anyone publishes) or from a sequence number
(from 1: the session from its first message, replayed, then live). Each client runs in a
process of its own (capped by the caller), so that the clients do not share one core; they
report to the calling process over pipes.

Every bench message is ``size`` bytes and starts with a 27-byte header: this run's random
8-byte tag, the publisher's number, a flag on each publisher's last message, the message's
number among its publisher's (from 0), and ``CLOCK_MONOTONIC`` in nanoseconds when its
batch was handed to the client library (the clock is the machine's, the same in every
process). Each subscriber checks that the sequence numbers it is given follow on with no
gap, that every publisher's messages arrive in their order with none missing or repeated,
and that it got every publisher's last message; it takes the publish-to-receive latency of
each message from the time its batch came out of ``batches()``. Messages of the session that
this run did not publish (earlier ones, replayed from 1, or another publisher's) are counted
and otherwise left alone.

Published: messages acknowledged as durable, from the first publisher's start to the last
acknowledgement. Delivered: bench messages received, summed over the subscribers, from the
first publisher's start to the last one received.

- :mod:`tickertape.client.load.clients`: the message header, the plan, one publisher and
  one checking subscriber.
- :mod:`tickertape.client.load.workers`: the worker processes, and what the calling
  process hears from them.
- :mod:`tickertape.client.load.report`: the results as a report (rates, latency
  percentiles, errors).

Not here: the ``tickertape bench`` verb's options and printing (``tickertape.cli.bench``).
"""
