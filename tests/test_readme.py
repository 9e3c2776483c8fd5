"""The README's Python API blocks run as shown: executed verbatim except that the named pool is swapped for a small
real pool declared with other column names and the same kind of probes (the full pool takes minutes to embed)."""

import re
import shutil
from pathlib import Path

import pytest
from realdata import needs_data

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
@needs_data
def test_the_readme_python_api_block_runs_as_shown(renamed_pool, tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) == 2 and blocks[0].count('"alpaca-eval-models"') == 1
    block = "\n".join(blocks)  # the second block continues the first's session (ds, X)
    shutil.copytree(renamed_pool / "cache", tmp_path / "cache")
    monkeypatch.chdir(tmp_path)  # the block writes results/bon and caches under ./cache, as a user's run would
    names: dict = {}
    exec(compile(block.replace('"alpaca-eval-models"', repr(str(renamed_pool / "pool.toml"))), "README", "exec"),
         names)
    bon = names["bon"]
    assert names["ds"].excluded.sum() > 0 and bon.proxies["min"].gain_at_n_max is not None
    assert len(bon.per_prompt.prompt_id) == bon.n_prompts and (tmp_path / "results/bon/summary.json").exists()
    probes = names["result"].evaluation.bon["pool+probes"]
    assert probes.n_responses > bon.n_responses  # the probes are back only in the pool that reports their picks
    assert names["head"].predict_std(names["X"][:3]).shape == (3,) and 0 < names["m"].calibrated_ece < 1
    assert names["bayes"].evaluation.conformal.coverage == 0.9
    assert set(names["campaign"].summary) == {"random", "dopt_past", "bald"}
    assert (tmp_path / "results/active/active.png").exists()
