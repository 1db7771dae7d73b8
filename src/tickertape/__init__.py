"""tickertape: sequenced, session-based message streams, persisted before they are published."""

__version__ = "0.1.0"
