"""User-facing errors: one line that names the file (and row/line) and says how to fix it."""


class EmbrmError(Exception):
    """An error the user can fix. The CLI prints its message alone (no traceback) and exits 2."""


def require(condition: bool, message: str) -> None:
    """Raise EmbrmError(message) unless condition holds."""
    if not condition:
        raise EmbrmError(message)
