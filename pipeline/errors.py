"""The one exception type whose message is shown to the user as a one-line error."""


class PipelineError(Exception):
    """A user-facing error: bad input, missing data or weights, a missing upstream run.

    The CLI prints ``Error: <message>`` on one line and exits non-zero, without a traceback.
    """
