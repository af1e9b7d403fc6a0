"""One exception type for every failure a user can cause (bad input, missing hardware)."""


class LlmtopError(Exception):
    """A one-line, user-facing error. The CLI prints it and exits non-zero, never a traceback."""

    exit_code = 1


class UsageError(LlmtopError):
    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (what `timeout`, CI and a closed terminal send), raised in the main thread and
    handled like ctrl-c: the finally blocks stop the pipeline and close the recording; llmtop exits with
    128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
