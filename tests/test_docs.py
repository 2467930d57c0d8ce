"""The documentation tells the truth about the CLI."""

import re
import subprocess
import sys

from tests.conftest import REPO


def test_cli_reference_is_generated_from_the_current_cli():
    """docs/cli.md is Typer's own rendering of the app: a new command or flag must land there too."""
    out = subprocess.run(
        [sys.executable, "-m", "colm_cli.docs"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert (REPO / "docs" / "cli.md").read_text() == out, (
        "docs/cli.md is stale: regenerate it with `python -m colm_cli.docs > docs/cli.md`"
    )


def test_cli_reference_is_plain_text():
    """Help text reaches the Markdown as written: no HTML escapes such as &#x27; for an apostrophe."""
    text = (REPO / "docs" / "cli.md").read_text()
    assert "checkpoint's" in text and not re.search(r"&#?\w+;", text)


def test_every_command_in_the_readme_exists():
    from colm_cli.app import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    # `colm X` in code: at the start of a line, after a backtick, or after a pipe
    used = set(re.findall(r"(?m)(?:^\s*|`|\|\s+)colm ([a-z]+)\b", (REPO / "README.md").read_text()))
    assert used and used <= commands, used - commands


def test_documented_shard_size_is_the_writers():
    from colm_core.checkpoint import DEFAULT_MAX_SHARD_BYTES

    size = f"{DEFAULT_MAX_SHARD_BYTES // 2**20} MiB"
    for doc in ("checkpoint-format.md", "surgery.md"):
        sizes = re.findall(r"(?:sharded at|above)\s+(\d+ [MG]iB)", (REPO / "docs" / doc).read_text())
        assert sizes and set(sizes) == {size}, (doc, sizes)


def test_training_guide_shows_the_options_real_defaults():
    """docs/training.md's flag table is prose beside the one definition (colm_core.options): same defaults."""
    import dataclasses

    from colm_core.options import TrainOptions

    defaults = {"--" + f.name.replace("_", "-"): f.default for f in dataclasses.fields(TrainOptions)}
    rows = re.findall(r"(?m)^\| (`--[^|]+) \| ([^|]+) \|", (REPO / "docs" / "training.md").read_text())
    shown = {
        name: value.strip()
        for flags, values in rows
        for name, value in zip(re.findall(r"`(--[a-z0-9-]+)`", flags), values.split(","))
    }
    assert len(shown) >= 15, shown
    for name, value in shown.items():
        default = defaults[name]
        if isinstance(default, bool):
            assert value == ("on" if default else "off"), name
        elif isinstance(default, (int, float)):
            assert float(value) == default, (name, value, default)
        else:
            assert value == default, (name, value, default)


def tracked_text_files() -> list:
    names = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=True).stdout.split()
    return [
        REPO / n for n in names if n.endswith((".md", ".py", ".sh", ".toml", ".yaml", ".txt")) or n.startswith(".ci/")
    ]


def test_the_repository_stands_alone():
    """A user's clone is all there is: no path into the project's shared folder or this machine's /work,
    and every relative link of the Markdown resolves to a file of the repository."""
    leaving = re.compile(r"\.\./shared|/work/|(?<!docs/)\bSPEC\.md")  # the spec is docs/spec.md
    outside = [
        f"{p.relative_to(REPO)}:{n}"
        for p in tracked_text_files()
        if p.name != "test_docs.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if leaving.search(line)
    ]
    assert not outside, outside
    broken = []
    for doc in (p for p in tracked_text_files() if p.suffix == ".md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not re.match(r"[a-z]+:", target) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, broken
