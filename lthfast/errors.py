"""The one error type users can cause (bad flags, missing or corrupt files).

The CLI prints it as a single line on stderr and exits with code 2; library code raises it and
never calls ``sys.exit``.

    lthfast build-beton nosuchset   # -> "error: unknown dataset 'nosuchset' (known: ...)", exit 2
"""


class UserError(Exception):
    """A problem the user can fix; its message is shown as one line, without a traceback."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM: raised by the CLI's signal handlers so that no library code (nor
    typer, which turns KeyboardInterrupt into an exit code) can mistake it for success. Finished
    stages are kept; rerunning the same command resumes from the last checkpoint."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
