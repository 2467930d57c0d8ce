"""Errors the CLI turns into a one-line message and an exit code (no traceback)."""

import errno

# `colm train --nproc`: the directory where each torchrun worker leaves its final error line (file = rank)
WORKER_ERRORS_ENV = "COLM_WORKER_ERRORS"


class ColmError(Exception):
    """Bad usage or invalid input: the message names the problem and the fix. Exit code 2."""

    exit_code = 2


class OptionError(ColmError):
    """A bad value of an option, worded in the terms of whoever gave it. The message is a template that
    names options as {name} placeholders: str() gives the Python parameter (top_k), which a caller of
    colm_core passes; the CLI shows the flag (--top-k) with in_flags(). Values go in as keywords, never
    into the template, so that braces in them are kept as they are."""

    def __init__(self, template: str, flags: dict[str, str] | None = None, **values):
        self.template, self.flags, self.values = template, flags or {}, values
        super().__init__(self.worded(lambda name: name))

    def worded(self, spell) -> str:
        names = _Names(self.values)
        names.spell = spell
        return self.template.format_map(names)

    def in_flags(self) -> str:
        """The message with each option named as its flag: `flags` where it is not --name-with-dashes."""
        return self.worded(lambda name: self.flags.get(name) or "--" + name.replace("_", "-"))


class _Names(dict):
    def __missing__(self, name: str) -> str:
        return self.spell(name)


class ColmRuntimeError(ColmError):
    """The input was valid but the work failed (a verification, a non-finite loss). Exit code 1."""

    exit_code = 1


class Interrupted(ColmRuntimeError):
    """A signal (SIGINT, SIGTERM) stopped the work; the message says what was kept. Exit code 130."""

    exit_code = 130


def missing_extra(what: str, e: ImportError, extra: str) -> ColmError:
    """The one-line error of an optional dependency that is not installed: what needs it, and the extra
    that installs it."""
    return ColmError(f"{what}, which is not installed ({e.msg}); install it with `pip install 'colm[{extra}]'`")


def os_error(e: OSError) -> ColmError:
    """A failed read or write (disk full, a file-size limit, a read-only directory) as one line naming
    what failed and the fix. Writes go to a temporary directory that is removed on failure, so the fix
    is to rerun: nothing half-written is left."""
    what = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return ColmRuntimeError(
            f"{what}; free disk space (or raise the file-size limit) and rerun: nothing half-written was kept"
        )
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ColmError(f"{what}; choose an -o/--output where you may write, or fix the permissions")
    return ColmRuntimeError(f"{what}; check the path and rerun")
