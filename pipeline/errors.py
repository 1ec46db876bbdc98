"""The one exception type whose message is shown to the user as a one-line error."""


class PipelineError(Exception):
    """A user-facing error: bad input, missing data or weights, a missing upstream run.

    The CLI prints ``Error: <message>`` on one line and exits non-zero, without a traceback.
    """


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message folded onto one line and cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
