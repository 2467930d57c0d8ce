"""docs/cli.md: Typer's Markdown rendering of the app, in plain text.

`python -m typer colm_cli.app utils docs` renders help through rich's HTML export, which escapes
quotes (`&#x27;`); this renders the same Markdown from the help text as written.
Regenerate with `python -m colm_cli.docs > docs/cli.md`."""

import typer
from typer.cli import get_docs_for_click

from colm_cli.app import app


def cli_reference() -> str:
    command = typer.main.get_command(app)
    return get_docs_for_click(obj=command, ctx=typer.Context(command, info_name="colm"), name="colm").strip() + "\n"


if __name__ == "__main__":
    print(cli_reference(), end="")
