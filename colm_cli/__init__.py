"""colm_cli: the `colm` command line, thin Typer commands over colm_core."""
