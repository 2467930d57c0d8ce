"""`python -m colm_cli ...` (what torchrun launches) is the same as `colm ...`."""

from colm_cli.app import main

main()
