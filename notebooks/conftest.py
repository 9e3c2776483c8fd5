"""pytest runs the notebooks through nbmake; each reads the whole alpaca-eval-models dataset and embeds with the
packaged MiniLM (on a cold cache), so each is `slow` (see DEVELOPERS.md: `-m "not slow"` leaves them out)."""

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.suffix == ".ipynb" and item.path.parent == HERE:
            item.add_marker(pytest.mark.slow)
