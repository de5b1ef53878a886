"""One exception type for problems a user can fix; the CLI prints it as one line."""


class CalibError(Exception):
    """A user-facing error: bad input, a missing file, a failed check."""
