"""One exception type for every failure a user can cause (bad input, missing hardware)."""


class LlmtopError(Exception):
    """A one-line, user-facing error. The CLI prints it and exits non-zero, never a traceback."""

    exit_code = 1


class UsageError(LlmtopError):
    exit_code = 2
