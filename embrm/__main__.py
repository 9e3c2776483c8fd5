"""`python -m embrm` = the `embrm` command."""

from embrm.cli import main

if __name__ == "__main__":
    main()
