"""Errors that reach the user as one line, without a traceback."""


class KdcoreError(Exception):
    """A problem the user can fix; the message says what, where and how."""


class NonFiniteLossError(KdcoreError):
    """A loss term became NaN or infinite; training stops and keeps the last good checkpoint."""
