"""The ``tickertape`` command line, one module per verb.

:mod:`~tickertape.cli.main` holds the top parser and the dispatch;
:mod:`~tickertape.cli.serve` (with :mod:`~tickertape.cli.serve_options` and
:mod:`~tickertape.cli.hangup`), :mod:`~tickertape.cli.publish`,
:mod:`~tickertape.cli.tail`, :mod:`~tickertape.cli.sessions` and
:mod:`~tickertape.cli.users` one verb each; :mod:`~tickertape.cli.argtypes` the kinds of
value the options take, :mod:`~tickertape.cli.options` the options several verbs share,
:mod:`~tickertape.cli.config` ``serve --config`` and the secrets kept off the command
line. Nothing below the command line (server, store, sources, protocol, client, wire)
imports this package.
"""
