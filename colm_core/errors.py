"""Errors the CLI turns into a one-line message and an exit code (no traceback)."""

# `colm train --nproc`: the directory where each torchrun worker leaves its final error line (file = rank)
WORKER_ERRORS_ENV = "COLM_WORKER_ERRORS"


class ColmError(Exception):
    """Bad usage or invalid input: the message names the problem and the fix. Exit code 2."""

    exit_code = 2


class ColmRuntimeError(ColmError):
    """The input was valid but the work failed (a verification, a non-finite loss). Exit code 1."""

    exit_code = 1


class Interrupted(ColmRuntimeError):
    """A signal (SIGINT, SIGTERM) stopped the work; the message says what was kept. Exit code 130."""

    exit_code = 130
