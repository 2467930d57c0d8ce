"""Command options: one definition per option (flags, help, defaults, --config), every value checked."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import typer.main

from colm_cli.app import app
from colm_core.errors import ColmError, OptionError
from colm_core.init import InitOptions
from colm_core.options import (
    EvalOptions,
    ExpandOptions,
    ExportOptions,
    GenerateOptions,
    InspectOptions,
    PullOptions,
    PushOptions,
    ServeOptions,
    SliceOptions,
    TrainOptions,
    flags_of,
    from_sources,
    value_type,
)
from tests.conftest import assert_one_line_error, colm_in_process


def click_command(name: str):
    return typer.main.get_command(app).commands[name]


COMMAND_OPTIONS = [
    (TrainOptions, "train"),
    (InitOptions, "init"),
    (ExpandOptions, "expand"),
    (SliceOptions, "slice"),
    (EvalOptions, "eval"),
    (GenerateOptions, "generate"),
    (ServeOptions, "serve"),
    (InspectOptions, "inspect"),
    (ExportOptions, "export"),
    (PullOptions, "pull"),
    (PushOptions, "push"),
]


@pytest.mark.parametrize("cls, command", COMMAND_OPTIONS, ids=[command for _, command in COMMAND_OPTIONS])
def test_flags_are_built_from_the_options_dataclass(cls, command):
    """Each field is one flag with the field's help and default; the command has no other copy of them."""
    params = {p.name: p for p in click_command(command).params}
    for f in dataclasses.fields(cls):
        param = params[f.name]
        flag = "--" + (f.metadata.get("flag") or f.name).replace("_", "-")
        assert flag in param.opts, (f.name, param.opts)
        assert param.help.startswith(f.metadata["help"])
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is not None:
            assert f"default: {default})" in param.help
        if f.metadata.get("range") is not None:
            assert str(f.metadata["range"]) in param.help
        if f.default is dataclasses.MISSING:
            assert param.required
        else:
            assert param.default is None  # "not given": a --config value or the dataclass default applies


def test_every_command_option_comes_from_a_dataclass():
    """The options a command declares itself are only the ones every command shares (input, output, device)."""
    shared = {"ckpt", "hf_dir", "repo_id", "output", "force", "verify", "device", "dtype"}
    own = {
        "init": set(),
        "train": {"config", "resume", "nproc"},
        "generate": {"prompt", "prompt_file", "prompts", "json_out"},
    }
    commands = typer.main.get_command(app).commands
    for cls, command in COMMAND_OPTIONS:
        fields = {f.name for f in dataclasses.fields(cls)}
        declared = {p.name for p in commands[command].params} - fields
        assert declared <= shared | own.get(command, set()), (command, declared)
    assert set(commands) == {command for _, command in COMMAND_OPTIONS} | {"import"}  # import: input and output only


def out_of_range(valid) -> list[float]:
    """Values a range must refuse: NaN, infinity and a value just beyond each bound."""
    bad = [math.nan, math.inf, -math.inf]
    if valid.low is not None:
        bad.append(valid.low if valid.low_open else valid.low - 1)
    if valid.high is not None:
        bad.append(valid.high if valid.high_open else valid.high + 1)
    return bad


RANGED = [
    (cls, f) for cls, _ in COMMAND_OPTIONS for f in dataclasses.fields(cls) if f.metadata.get("range") is not None
]


@pytest.mark.parametrize("cls, f", RANGED, ids=[f"{c.__name__}.{f.name}" for c, f in RANGED])
def test_every_numeric_option_refuses_values_outside_its_range(cls, f):
    kind, is_list = value_type(cls, f)
    valid = f.metadata["range"]
    required = {f.name: 1 for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
    for bad in out_of_range(valid):
        if kind is int and not math.isfinite(bad):
            continue  # an int flag cannot hold NaN or infinity
        value = kind(bad) if math.isfinite(bad) else bad
        flag = "--" + (f.metadata.get("flag") or f.name).replace("_", "-")
        # A Python caller is told the parameter's name; the CLI, which translates the error, the flag.
        with pytest.raises(OptionError, match=f"^{f.name} .*must be {re.escape(str(valid))}") as raised:
            cls(**{**required, f.name: [value] if is_list else value})
        assert re.match(f"{flag} .*must be {re.escape(str(valid))}", raised.value.in_flags())


def test_option_errors_name_the_parameter_in_python_and_the_flag_on_the_command_line():
    error = OptionError(
        "{n_layers} {text!r}: expected {what}; see {heads}", flags_of(InitOptions), text="{heads}", what="an integer"
    )
    assert str(error) == "n_layers '{heads}': expected an integer; see heads"  # braces in a value are kept
    assert error.in_flags() == "--layers '{heads}': expected an integer; see --heads"


def test_core_errors_name_parameters_and_the_cli_names_flags(tmp_path):
    """The library answers a Python caller in its own terms; the same mistake on the command line is worded
    with the flag."""
    from colm_core.data import read_texts
    from colm_core.parallel import parse_device

    with pytest.raises(OptionError, match=r"^device 'tpu': not a device"):
        parse_device("tpu")
    with pytest.raises(OptionError, match=r"^data .*nope.txt: no such file"):
        read_texts([tmp_path / "nope.txt"])
    colm_in_process("init", "-o", tmp_path / "m", "--layers", "1", check=True)
    proc = colm_in_process("eval", tmp_path / "m", "--device", "tpu")
    assert_one_line_error(proc, 2, "--device 'tpu': not a device")
    proc = colm_in_process("eval", tmp_path / "m", "--data", tmp_path / "nope.txt")
    assert_one_line_error(proc, 2, f"--data {tmp_path / 'nope.txt'}: no such file")


def test_config_values_are_type_checked(tmp_path):
    config = tmp_path / "run.toml"

    def read(text: str) -> TrainOptions:
        config.write_text(text)
        return TrainOptions.from_sources(config, {})

    # A string for a list option is a one-element list, not its characters; an integer for a float is fine.
    assert read('data = "/abs/file.txt"\nlr = 1').data == ["/abs/file.txt"] and read("lr = 1").lr == 1.0
    assert read('chain_weights = "1,2"').chain_weights == [1.0, 2.0]
    assert read("chain_weights = [1, 2.5]").chain_weights == [1.0, 2.5]
    for text, message in [
        ("steps = 2.7", "steps = 2.7 is not an integer"),
        ('steps = "abc"', "steps = 'abc' is not an integer"),
        ("steps = true", "steps = True is not an integer"),
        ("data = [1]", "data = [1] is not a list of str values"),
        ('compile = "yes"', "compile = 'yes' is not true or false"),
        ("min_lr_ratio = 5", "min_lr_ratio 5: must be in [0, 1]"),
    ]:
        with pytest.raises(ColmError, match=re.escape(message)):
            read(text)
    with pytest.raises(ColmError, match="unknown key 'stepz'; valid keys: data, steps, batch_size, "):
        read("stepz = 3")


def test_init_chains_is_a_chain_count_and_heads_lists_heads_per_chain():
    from colm_core.init import build_config

    assert build_config(InitOptions(chains=3))[0].heads == [2, 2, 2]  # tiny: 2 query heads per chain
    assert build_config(InitOptions(heads=[4, 2]))[0].heads == [4, 2]
    assert build_config(InitOptions(chains=2, heads=[4]))[0].heads == [4, 4]
    with pytest.raises(ColmError, match="--chains 3 and --heads 4,4 disagree"):
        build_config(InitOptions(chains=3, heads=[4, 4]))
    init = from_sources(InitOptions, None, {"chains": "2", "heads": "4,4"})
    assert (init.chains, init.heads) == (2, [4, 4])


def test_cli_refuses_bad_numbers_and_old_style_init_chains(tmp_path):
    """The real CLI: one error line naming the flag and its range, exit 2, nothing written."""
    assert_one_line_error(
        colm_in_process("init", "-o", tmp_path / "m", "--chains", "2,2"),
        2,
        "--chains '2,2': expected an integer; query heads per chain are given with --heads 2,2",
    )
    assert_one_line_error(
        colm_in_process("init", "-o", tmp_path / "m", "--init-std", "nan"), 2, "--init-std nan: must be > 0"
    )
    (tmp_path / "run.toml").write_text("steps = 2.7\n")
    (tmp_path / "run.json").write_bytes(b'{"steps": 2,')
    for args, message in [
        (["--min-lr-ratio", "-1", "--warmup-steps", "0"], "--min-lr-ratio -1: must be in [0, 1]"),
        (["--weight-decay", "-1"], "--weight-decay -1: must be >= 0"),
        (["--chain-weights", "1,-1"], "--chain-weights 1,-1: each value must be >= 0"),
        (["--beta1", "2"], "--beta1 2: must be in [0, 1)"),
        (["--lr", "nan"], "--lr nan: must be > 0"),
        (["--config", tmp_path / "run.toml"], "steps = 2.7 is not an integer"),
        (["--config", tmp_path / "run.json"], f"{tmp_path / 'run.json'}: not valid JSON"),
    ]:
        assert_one_line_error(colm_in_process("train", tmp_path / "m", *args, "-o", tmp_path / "t"), 2, message)
    for args, message in [
        (["eval", tmp_path / "m", "--max-tokens", "-5"], "--max-tokens -5: must be >= 1"),
        (["generate", tmp_path / "m", "--prompt", "a", "--temperature", "nan"], "--temperature nan: must be >= 0"),
        (["generate", tmp_path / "m", "--prompt", "a", "--top-k", "3"], "--top-k 3 has no effect at temperature 0"),
        (["expand", tmp_path / "m", "--init-std", "inf"], "--init-std inf: must be > 0"),
    ]:
        assert_one_line_error(colm_in_process(*args), 2, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "run.toml"]
