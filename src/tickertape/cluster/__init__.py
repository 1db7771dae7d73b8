"""A cluster of tickertape nodes that share their sessions through NATS JetStream.

One node at a time, the *sequencer*, builds batches and appends them to the cluster's
journal (a replicated JetStream stream); every node, the sequencer included, applies
the journal's records in order to its own data directory and serves from it as a
single server does.

- :mod:`~tickertape.cluster.records`: what the journal holds (batches, rolls, fences)
  and their encoding as JetStream messages; no I/O.
- :mod:`~tickertape.cluster.journal`: appending to the journal, fenced by the expected
  last sequence, and reading it in order.
- :mod:`~tickertape.cluster.lease`: who may try to write: a lease in a JetStream
  key-value bucket.
- :mod:`~tickertape.cluster.apply`: applying a record to a node's data directory, or
  saying why it cannot be.
- :mod:`~tickertape.cluster.position`: how far a node has applied the journal, kept in
  its data directory.
- :mod:`~tickertape.cluster.node`: a node's loop: follow, take over, sequence, step
  down. :mod:`~tickertape.cluster.config`: what ``serve --cluster`` tells it.
- :mod:`~tickertape.cluster.local`: three nats-servers on 127.0.0.1, for trying a
  cluster on one machine and for the tests; no tickertape node.
"""
