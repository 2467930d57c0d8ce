"""Typer options built from an options dataclass (colm_core/options.py): one flag per field, with the field's
help, range and default, so a flag is defined once, in colm_core."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Annotated

import typer

from colm_core.options import Range, check_range, flag_name, value_type


def option_help(f: dataclasses.Field) -> str:
    """The field's help, then its range or choices and its default: "Optimizer steps. (>= 1; default: 200)"."""
    notes = []
    if f.metadata.get("range") is not None:
        notes.append(str(f.metadata["range"]))
    if f.metadata.get("choices"):
        notes.append("one of " + ", ".join(f.metadata["choices"]))
    default = f.default if f.default is not dataclasses.MISSING else None
    if default is not None:
        notes.append(f"default: {default}")
    return f.metadata["help"] + (f" ({'; '.join(notes)})" if notes else "")


def typer_parameter(cls, f: dataclasses.Field) -> inspect.Parameter:
    """A Typer option for one field. Its default is None, so that "not given" is told apart from a value
    (a --config file may set it), or none for a required field; list fields of numbers take one
    comma-separated value."""
    kind, is_list = value_type(cls, f)
    flag = flag_name(f)
    if kind is bool:
        cli_type, decls = bool, [f"{flag}/--no-{flag[2:]}" if f.metadata.get("negatable", True) else flag]
    elif is_list and kind is str:
        cli_type, decls = list[str], [flag]  # repeatable: --data a.txt --data b/
    elif is_list or f.metadata.get("hint"):
        cli_type, decls = str, [flag]  # "4,4,4,4", or text checked by colm_core with a hint on a mistake
    else:
        cli_type, decls = kind, [flag]
    metavar = f.metadata.get("example") if is_list and kind is not str else None
    if cli_type is str and not is_list and kind is not str:
        metavar = f"<{kind.__name__}>"  # shown as what it means, not as the text it is read from
    envvar = f.metadata.get("envvar")
    info = typer.Option(
        *decls, help=option_help(f), show_default=False, metavar=metavar, envvar=envvar, show_envvar=envvar is not None
    )
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    return inspect.Parameter(
        f.name,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=... if required else None,
        annotation=Annotated[cli_type if required else cli_type | None, info],
    )


def with_options(cls, after: int = 0):
    """Give a command `def cmd(..., **options)` one option per field of cls, placed after its first `after`
    parameters; the command receives the given values (None for those not given) in **options."""

    def decorate(command):
        own = [
            p
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        fields = [typer_parameter(cls, f) for f in dataclasses.fields(cls)]
        command.__signature__ = inspect.Signature(own[:after] + fields + own[after:])
        return command

    return decorate


def ranged(help: str, valid: Range, *decls: str, **kwargs):
    """A Typer option that is not an options field (train's --nproc, which launches the processes): its range
    is shown in --help and checked when the flag is read, with the same message as a field's."""

    def callback(param: typer.CallbackParam, value):
        if value is not None:
            check_range(param.name, value, valid, help)
        return value

    return typer.Option(*decls, help=f"{help} ({valid})", callback=callback, **kwargs)
