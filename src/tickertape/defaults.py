"""Where a SoupBinTCP server listens by default, and so where a client connects.

A neutral home for the two defaults that the server (``tickertape serve``, the embedded
:class:`~tickertape.embedded.Tickertape`) and the clients (``tail``, ``publish``,
``bench``) share, so that a client needs nothing of the server to know them. Nothing
else lives here.
"""

from __future__ import annotations

from typing import Final

DEFAULT_HOST: Final = "127.0.0.1"
"""The address a SoupBinTCP server listens on, and a client connects to, by default."""
DEFAULT_PORT: Final = 7300
"""The SoupBinTCP port a server listens on, and a client connects to, by default."""
