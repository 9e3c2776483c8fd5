"""A study that compares embedders ([[embedders]]): one job per embedder, one report section and JSON rows for
all, the single-embedder study's results where they were, a dataset's `prompts = N` subset, and bad inputs as one
clean error line. The real MiniLM under two templates and windows plays two embedders (the renamed real pool,
12 prompts, and 40 real HH pairs: `prompts = 40`)."""

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from badinput import Bad, assert_clean_failure
from realdata import DATA_DIR, needs_data
from typer.testing import CliRunner

from embrm.cli import app
from embrm.core._errors import EmbrmError
from embrm.data._registry import load_dataset
from embrm.studies._config import Study, jobs_of, load_study, study_from_dict
from embrm.studies._store import result_paths

EMBEDDERS = """
[[embedders]]
name = "plain"
dtype = "float32"
[[embedders]]
name = "qa"
dtype = "float32"
max_length = 48
template = "Question: {{prompt}}\\nAnswer: {{response}}"
"""
STUDY = """
name = "two-embedders"
seeds = [0, 1]
datasets = ["{root}/pool.toml"]
human_pairs = [{{ path = "{root}/hh.jsonl", name = "hh", prompts = 40 }}]
k = 2
aggregations = ["mean", "min"]
methods = []
replicate = true
[labels]
n_pairs = 200
[[noise]]
name = "flip25"
flip = 0.25
[[learners]]
head = "linear"
""" + EMBEDDERS


@pytest.fixture(scope="module")
def ran(renamed_pool, tmp_path_factory):
    """The two-embedder study run once through the CLI (the `plain` vectors are in the fixture's cache already)."""
    root = tmp_path_factory.mktemp("embedders")
    (root / "study.toml").write_text(STUDY.format(root=renamed_pool))
    shutil.copytree(renamed_pool / "cache", root / "cache")
    res = CliRunner().invoke(app, ["run", str(root / "study.toml"), "--out", str(root / "res"), "--cache-dir",
                                   str(root / "cache"), "--workers", "1", "--format", "json"])
    assert res.exit_code == 0, res.output
    return root, json.loads(res.stdout)


@pytest.mark.slow
@needs_data
def test_every_job_runs_once_per_embedder(ran):
    root, summary = ran
    study = load_study(root / "study.toml")
    assert summary["timings"]["n_jobs"] == 2 * (2 + 2) and summary["timings"]["n_replication_jobs"] == 2 * 2 * 2
    names = sorted(p.name.rsplit("-", 1)[0] for p in (root / "res" / "jobs").glob("*.json"))
    assert names[:4] == ["hh@plain__human__linear__seed0", "hh@plain__human__linear__seed1",
                         "hh@qa__human__linear__seed0", "hh@qa__human__linear__seed1"]
    assert "renamed-pool.half2@qa__flip25__linear__seed1" in names and len(names) == 16
    run = json.loads(result_paths(root / "res" / "jobs", jobs_of(study)[-1], study)[0].read_text())
    assert run["embedder"] == "qa" and run["dataset_label"] == "hh" and run["dataset"] == "hh@qa"
    fits = pl.read_parquet(root / "res" / "fit_metrics.parquet")
    assert fits["dataset"].unique().sort().to_list() == ["hh@plain", "hh@qa", "renamed-pool@plain",
                                                          "renamed-pool@qa"]
    # other vectors, other numbers: the two templates are two embedders, not one run twice
    a, b = (fits.filter(pl.col("dataset") == f"renamed-pool@{e}")["accuracy"].to_list() for e in ("plain", "qa"))
    assert a != b
    embedding = json.loads((root / "res" / "study.json").read_text())["embedding"]
    assert embedding["renamed-pool@plain"]["inputs"] != embedding["renamed-pool@qa"]["inputs"]
    assert summary["replication"] and all("@" not in r["finding"].split(",")[0] or "half" not in r["finding"]
                                          for r in summary["replication"])


@pytest.mark.slow
@needs_data
def test_the_report_and_json_compare_both_embedders(ran):
    root, _ = ran
    report = (root / "res" / "report.md").read_text()
    section = report.split("## Embedders", 1)[1].split("\n## ", 1)[0]
    rows = [l for l in section.splitlines() if l.startswith("| `")]
    assert [r.split(" | ")[:2] for r in rows[:4]] == [["| `renamed-pool`", "`plain`"], ["| `renamed-pool`", "`qa`"],
                                                      ["| `hh`", "`plain`"], ["| `hh`", "`qa`"]]
    assert "st:sentence-transformers/all-MiniLM-L6-v2" in rows[0] and "`Question: {prompt}\\nAnswer: {response}`" in rows[1]
    assert "## Best-of-n on `renamed-pool@qa`" in report and "2 embedders (`plain`, `qa`" in report
    rows = json.loads((root / "res" / "embedders.json").read_text())
    assert [(r["dataset"], r["embedder"]) for r in rows] == [("renamed-pool", "plain"), ("renamed-pool", "qa"),
                                                            ("hh", "plain"), ("hh", "qa")]
    pool, human = rows[1], rows[3]
    assert pool["description"]["template"] == "Question: {prompt}\nAnswer: {response}"
    assert pool["description"]["backend"] == "st" and pool["n_jobs"] == 2 and pool["n_seeds"] == 2
    # one job per seed: the headline numbers are the seeds' mean of the tables' (the ensemble mean's gain on the pool)
    fits = pl.read_parquet(root / "res" / "fit_metrics.parquet")
    bon = pl.read_parquet(root / "res" / "bon_summary.parquet").filter(
        (pl.col("dataset") == "renamed-pool@qa") & (pl.col("variant") == "pool") & (pl.col("proxy") == "mean"))
    assert pool["accuracy"] == pytest.approx(fits.filter(pl.col("dataset") == "renamed-pool@qa")["accuracy"].mean())
    assert pool["length_correlation"] == pytest.approx(
        fits.filter(pl.col("dataset") == "renamed-pool@qa")["length_correlation"].mean())
    assert bon.height == 2 and pool["gain"] == pytest.approx(bon["gain"].mean())
    assert human["accuracy"] == pytest.approx(fits.filter(pl.col("dataset") == "hh@qa")["accuracy"].mean())
    assert human["gain"] is None and set(pool["per_learner"]) == {"linear"}
    assert json.loads((root / "res" / "study.json").read_text())["embedders"] == rows


@pytest.mark.slow
@needs_data
def test_a_resumed_study_with_embedders_runs_nothing_again(ran):
    root, _ = ran
    stamps = {p: p.stat().st_mtime_ns for p in (root / "res" / "jobs").glob("*.json")}
    res = CliRunner().invoke(app, ["run", str(root / "study.toml"), "--out", str(root / "res"), "--cache-dir",
                                   str(root / "cache"), "--workers", "1", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in (root / "res" / "jobs").glob("*.json")} == stamps


def test_a_single_embedder_study_keeps_its_result_paths():
    """Keys and digests of the last release (before [[embedders]], --device, --max-tokens): stored results resume."""
    study = Study(length_control_gold="loglinear")  # the last release's pool-lc gold: its digests hold
    first, human = jobs_of(study)[0], jobs_of(study)[-1]
    assert result_paths(Path("j"), first, study)[0].name == "alpaca-eval-models__bt10__linear__seed0-47b64a8322c1.json"
    # the AlpacaEval-style gold (the default since) changes pool-lc's numbers: those jobs run again
    assert result_paths(Path("j"), first, Study())[0].name != "alpaca-eval-models__bt10__linear__seed0-47b64a8322c1.json"
    assert first.embedder is None and first.group == "alpaca-eval-models" and human.key.startswith("hh-rlhf")
    study.embedder = replace_template(study.embedder)
    assert result_paths(Path("j"), first, study)[0].name != "alpaca-eval-models__bt10__linear__seed0-47b64a8322c1.json"


def replace_template(config):
    from dataclasses import replace

    return replace(config, template="Q: {prompt} A: {response}")


def test_embedders_multiply_the_grid_and_digest_their_own_config():
    doc = {"datasets": ["alpaca-eval-models"], "human_pairs": [], "embedders": [
        {"name": "a"}, {"name": "b", "max_length": 128}]}
    study = study_from_dict(doc, "s.toml")
    jobs = jobs_of(study)
    assert len(jobs) == 2 * len(jobs_of(Study(human_pairs=[], datasets=study.datasets)))
    assert {j.key.split("/")[0] for j in jobs} == {"alpaca-eval-models@a", "alpaca-eval-models@b"}
    a, b = jobs[0], next(j for j in jobs if j.embedder == "b" and j.key.split("/", 1)[1] == jobs[0].key.split("/", 1)[1])
    assert a.digest(study) != b.digest(study)
    again = study_from_dict({**doc, "embedders": [{"name": "a"}, {"name": "b", "max_length": 64}]}, "s.toml")
    assert a.digest(again) == a.digest(study) and b.digest(again) != b.digest(study)


@pytest.mark.slow
@needs_data
def test_prompts_keeps_the_first_prompts_of_a_dataset():
    study = study_from_dict({"datasets": [{"path": "alpaca-eval-bon16", "name": "bon16-small", "prompts": 6}],
                             "human_pairs": []}, "s.toml")
    ds = load_dataset(study.datasets[0], DATA_DIR)
    full = load_dataset("alpaca-eval-bon16", DATA_DIR).responses["prompt_id"].unique().sort()
    assert ds.responses["prompt_id"].unique().sort().to_list() == full[:6].to_list() and ds.responses.height == 96
    whole = study_from_dict({"datasets": [{"path": "alpaca-eval-bon16", "name": "bon16-small"}], "human_pairs": []},
                            "s.toml")
    assert jobs_of(study)[0].digest(study) != jobs_of(whole)[0].digest(whole)
    with pytest.raises(EmbrmError, match="prompts = 5000 but the dataset has 805 prompts"):
        load_dataset(study_from_dict({"datasets": [{"path": "alpaca-eval-bon16", "prompts": 5000}],
                                      "human_pairs": []}, "s.toml").datasets[0], DATA_DIR)


@pytest.mark.parametrize("path", [Path(__file__).parents[2] / "studies" / "embedders.toml"], ids=["embedders.toml"])
def test_the_shipped_comparison_study_is_small(path):
    study = load_study(path)
    assert len(study.embedders) >= 3 and study.datasets[0].prompts and len(jobs_of(study)) <= 100


VALID = 'datasets = ["pool.csv"]\nhuman_pairs = []\nmethods = []\n'
ONE = '[[embedders]]\nname = "a"\n'
CASES = {
    "both": (VALID + '[embedder]\nbackend = "st"\n' + ONE, r"either \[embedder\] .* or \[\[embedders\]\] .*not both"),
    "duplicate_name": (VALID + ONE + ONE.replace('"\n', '"\nmax_length = 64\n'),
                       r'\[\[embedders\]\] name #2 repeats "a"'),
    "missing_name": (VALID + ONE + '[[embedders]]\nbackend = "st"\n', r"\[\[embedders\]\] #2: needs name = "),
    "unknown_key": (VALID + ONE + 'devices = "cuda"\n', r"\[\[embedders\]\] #1: unknown key 'devices'"),
    "bad_name": (VALID + '[[embedders]]\nname = "a/b"\n', r'\[\[embedders\]\] #1: name = "a/b" must be a plain name'),
    "bad_option": (VALID + ONE + "max_length = 0\n",
                   r"\[\[embedders\]\] #1: .*max_length must be an integer in \[1, 1048576\] or None, got 0"),
    "same_config": (VALID + ONE + '[[embedders]]\nname = "b"\n', r"#2: the same embedder as #1"),
    "empty": (VALID + "embedders = []\n", r"\[\[embedders\]\] is empty"),
    "generated": ('human_pairs = []\nmethods = []\n[[learners]]\nhead = "linear"\n[[datasets]]\ngenerate = "overopt"\n' + ONE +
                  '[[embedders]]\nname = "b"\nmax_length = 64\n', r"overopt: a generated dataset carries its own"),
    "prompts": ('human_pairs = []\nmethods = []\n[[datasets]]\npath = "pool.csv"\nprompts = 0\n',
                r"prompts must be a positive integer"),
}


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-embedders")
    pool = pl.DataFrame({"prompt_id": [f"p{i // 5}" for i in range(40)], "prompt": [f"q{i // 5}" for i in range(40)],
                         "response": [f"answer {i}" for i in range(40)], "gold": np.random.default_rng(0).random(40)})
    pool.write_csv(root / "pool.csv")
    for id, (text, _) in CASES.items():
        (root / f"{id}.toml").write_text(text)
    return root


@pytest.mark.parametrize("id", CASES)
def test_bad_embedders_are_one_error_line(id, bad_root):
    case = Bad(id, ("run", f"{{root}}/{id}.toml", "--out", f"{{root}}/results/{id}", "--cache-dir", "{root}/cache"),
               rf"{id}\.toml.*{CASES[id][1]}", ("results", "cache"))
    assert_clean_failure(case, bad_root)
