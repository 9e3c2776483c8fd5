"""The README's Python API blocks run as shown: executed verbatim except that the named pool is swapped for a small
real pool declared with other column names and the same kind of probes (the full pool takes minutes to embed)."""

import json
import re
import shutil
import sys
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


def readme_results():
    """benchmarks/readme_results.py, imported in-process (stdlib only: instant)."""
    import importlib.util

    path = README.parent / "benchmarks" / "readme_results.py"
    spec = importlib.util.spec_from_file_location("readme_results", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("readme_results", module)  # its dataclasses resolve their module by name
    spec.loader.exec_module(sys.modules["readme_results"])
    return sys.modules["readme_results"]


def test_the_readme_results_are_the_committed_reports():
    problem = readme_results().check()
    assert problem is None, f"{problem} (README.md's result blocks are generated from benchmarks/results/)"


LINE = ("- **p, bt10 labels, plain learners** — Coste et al.: worst-case (WCO, min) beats the ensemble mean: gain "
        "difference (min − mean) -0.057 [-0.099, -0.018] (effect size -0.23; 3 seeds, 9 runs, 240 held-out prompts) "
        "→ **reversed**{more}.")
DESCRIPTIVE = ("- **p, all labels, plain learners** — Gao et al.: over-optimisation: the ensemble mean's gold falls "
               "from a peak before n = N to n = N: in 3 of 18 runs, by +0.013 gain on average (descriptive)")


def report(more: str = "") -> str:
    return f"# r\n\n## Findings\n\nHow.\n\n{LINE.format(more=more)}\n{DESCRIPTIVE}\n\n## Next\n"


def test_finding_lines_that_gain_text_after_the_verdict_keep_it_as_a_column():
    rr = readme_results()
    plain, longer = (rr.findings_from_markdown(report(m)) for m in ("", "; after Holm: **inconclusive**; MDE 0.05"))
    assert [r.estimate for r in plain] == ["-0.057 [-0.099, -0.018]", "in 3 of 18 runs, by +0.013 gain on average "
                                                                        "(descriptive)"]
    assert plain[0].claim == "worst-case (WCO, min) beats the ensemble mean" and plain[0].verdict == "reversed"
    assert plain[1].claim.endswith("to n = N") and plain[1].verdict == "descriptive"
    assert longer[0].verdict == "reversed" and longer[0].extra == {"also reported": "after Holm: **inconclusive**; "
                                                                                     "MDE 0.05"}
    assert "| also reported |" in rr.findings_block(longer, "s").splitlines()[2]


def test_findings_json_fields_added_later_become_columns_and_a_json_of_another_run_is_refused(tmp_path):
    rr = readme_results()
    effect = {"estimate": -0.057, "lo": -0.099, "hi": -0.018, "effect_size": -0.23, "n_seeds": 3, "n_units": 9,
              "n_prompts": 240, "method": "m", "level": 0.95, "mde_new": 0.041}
    items = [{"key": "k", "dataset": "p", "labels": "bt10", "source": "Coste et al.", "claim": "c", "measure": "m",
              "direction": 1, "note": "", "verdict": "reversed", "effect": effect,
              "adjusted_verdict": "not reproduced (inconclusive)", "q_value": 0.08, "seeds_needed": 7,
              "power": {"mde": 0.05, "seeds_needed": 12, "prompts_needed": None}},
             {"key": "d", "dataset": "p", "labels": "all", "source": "Gao et al.", "claim": "o", "measure": "",
              "direction": 1, "note": "in 3 of 18 runs", "verdict": "not measured", "effect": None}]
    path = tmp_path / "findings.json"
    path.write_text(json.dumps(items))
    rows = rr.findings_of(report(), path)
    assert rows[0].extra == {"after the family (q)": "not reproduced (inconclusive) (0.080)",
                             "detectable at 80 %": "0.050", "seeds / prompts to detect it": "12 / none",
                             "seeds_needed": "7", "mde_new": "+0.041"}
    assert rows[1].estimate == "in 3 of 18 runs" and rows[1].verdict == "descriptive"
    header = rr.findings_block(rows, "s").splitlines()[2]
    assert header.endswith("| after the family (q) | detectable at 80 % | seeds / prompts to detect it | seeds_needed "
                           "| mde_new |")
    items[0]["effect"] = effect | {"estimate": -0.2}
    path.write_text(json.dumps(items))
    with pytest.raises(rr.StaleInput, match="not from the run of its report"):
        rr.findings_of(report(), path)


def test_check_names_the_stale_line_and_the_command(tmp_path):
    rr = readme_results()
    stale = README.read_text().replace("| linear · mean | 0.", "| linear · mean | 9.", 1)
    (tmp_path / "README.md").write_text(stale)
    problem = rr.check(tmp_path / "README.md")
    assert problem is not None and "linear · mean | 9." in problem and "python benchmarks/readme_results.py" in problem
