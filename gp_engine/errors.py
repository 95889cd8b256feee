"""The one exception type users see: a message that names the problem and the fix."""


class GPEngineError(Exception):
    """A user-facing error. The CLI prints its message (no traceback) and exits with status 2."""
