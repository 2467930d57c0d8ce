"""Errors the CLI turns into a one-line message and an exit code (no traceback)."""


class ColmError(Exception):
    """Bad usage or invalid input: the message names the problem and the fix. Exit code 2."""

    exit_code = 2


class ColmRuntimeError(ColmError):
    """The input was valid but the work failed (a verification, a non-finite loss). Exit code 1."""

    exit_code = 1
