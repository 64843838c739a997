"""Errors that reach the user as one line, without a traceback."""


class KdcoreError(Exception):
    """A problem the user can fix; the message says what, where and how."""


class NonFiniteLossError(KdcoreError):
    """A loss term became NaN or infinite; training stops and keeps the last good checkpoint."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message, or its type's name when it has none."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
