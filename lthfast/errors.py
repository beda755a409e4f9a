"""The one error type users can cause (bad flags, missing or corrupt files).

The CLI prints it as a single line on stderr and exits with code 2; library code raises it and
never calls ``sys.exit``.

    lthfast build-beton nosuchset   # -> "error: unknown dataset 'nosuchset' (known: ...)", exit 2
"""


class UserError(Exception):
    """A problem the user can fix; its message is shown as one line, without a traceback."""
