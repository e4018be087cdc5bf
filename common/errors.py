"""User-facing errors: one sentence that names the file or value and says what to do."""


class CdeitError(Exception):
    """A user's mistake or bad input. The command line prints the message alone, without a traceback."""
