"""The one exception type users see.

Anything raised as :class:`MigeBenchError` is a problem with the user's input or environment (a missing file, a typo
in a task YAML, absent weights). The CLI prints its message as one clear sentence and exits non-zero; every other
exception is a bug and keeps its traceback.
"""


class MigeBenchError(Exception):
    """A user-facing error: the message names the file or value at fault and how to fix it."""
