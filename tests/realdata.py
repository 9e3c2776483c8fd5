"""Where the real shared data lives for tests (never copied into the project)."""

import os
from pathlib import Path

import pytest

DATA_DIR = Path(os.environ.get("EMBRM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA_DIR / "alpaca_eval_bon16").exists(),
                                reason=f"real data not found at {DATA_DIR} (set EMBRM_DATA_DIR)")
