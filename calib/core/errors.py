"""One exception type for problems a user can fix; the CLI prints it as one line."""


class CalibError(Exception):
    """A user-facing error: bad input, a missing file, a failed check (exit code 1)."""

    exit_code = 1


class OptionError(CalibError):
    """An option value refused before any work is done (exit code 2, as for click's usage errors)."""

    exit_code = 2
