"""komorebi-worker: unify a Komorebi screen recording with its Amazon Connect call audio."""

__version__ = "0.1.0"
