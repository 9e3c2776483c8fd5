"""The README's Python API block runs as shown: executed verbatim except that the named pool is swapped for a small
real pool declared with other column names and the same kind of probes (the full pool takes minutes to embed)."""

import re
import shutil
from pathlib import Path

from realdata import needs_data

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@needs_data
def test_the_readme_python_api_block_runs_as_shown(renamed_pool, tmp_path, monkeypatch):
    (block,) = python_blocks()
    assert block.count('"alpaca-eval-models"') == 1
    shutil.copytree(renamed_pool / "cache", tmp_path / "cache")
    monkeypatch.chdir(tmp_path)  # the block writes results/bon and caches under ./cache, as a user's run would
    names: dict = {}
    exec(compile(block.replace('"alpaca-eval-models"', repr(str(renamed_pool / "pool.toml"))), "README", "exec"),
         names)
    bon = names["bon"]
    assert names["ds"].excluded.sum() > 0 and bon.proxies["min"].gain_at_n_max is not None
    assert len(bon.per_prompt["prompt_id"]) == bon.n_prompts and (tmp_path / "results/bon/summary.json").exists()
    probes = names["result"].evaluation.bon["pool+probes"]
    assert probes.n_responses > bon.n_responses  # the probes are back only in the pool that reports their picks
