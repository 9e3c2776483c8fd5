"""`python -m embrm.cli ...` (the same as the `embrm` command)."""

from embrm.cli import main

main()
