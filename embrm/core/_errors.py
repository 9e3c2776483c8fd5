"""User-facing errors: one line that names the file (and row/line) and says how to fix it."""


class EmbrmError(Exception):
    """An error the user can fix. The CLI prints its message alone (no traceback) and exits 2.

    `field` names the parameter at fault when there is one (e.g. "seed", "runner"), so a caller can point at its
    own spelling of it (the CLI: the option that sets it) without reading the message."""

    def __init__(self, message: str = "", *, field: str | None = None):
        super().__init__(message)
        self.field = field


def require(condition: bool, message: str, *, field: str | None = None) -> None:
    """Raise EmbrmError(message) unless condition holds."""
    if not condition:
        raise EmbrmError(message, field=field)
