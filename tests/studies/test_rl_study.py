"""A study with an [rl] table (embrm.rl through embrm.studies): RL runs in every pool job, rl_summary.parquet, the
report's RL sections, RL findings with intervals and replication, resume, digests, and bad [rl] tables."""

import json

import polars as pl
import pytest

from embrm.core import EmbrmError
from embrm.studies._config import jobs_of, load_study, study_from_dict
from embrm.studies._run import run_study

STUDY = """name = "rl-tiny"
seeds = [0, 1]
human_pairs = []
methods = []
replicate = true
k = 3
aggregations = ["mean", "min"]

[[datasets]]
generate = "overopt"
name = "ov"
params = { n_prompts = 40, n_candidates = 60, dim = 8, seed = 0 }

[labels]
n_pairs = 200

[[noise]]
name = "bt10"
beta = 10.0

[[learners]]
head = "linear"

[[learners]]
head = "linear"
mode = "features"

[rl]
policies = ["pool", "gaussian"]
steps = 20
points = 6
lr = 0.2
kl = [0.0, 0.1]
transforms = ["none", "cdf"]

[rl.gaussian]
lr = 0.05
"""


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl-study")
    (root / "study.toml").write_text(STUDY)
    study = load_study(root / "study.toml")
    result = run_study(study, root / "out", cache_dir=root / "cache", workers=1, progress=False)
    return study, result, root


def test_every_pool_job_runs_each_policy_and_combination(study_run):
    study, result, root = study_run
    rl = pl.read_parquet(root / "out" / "rl_summary.parquet")
    assert set(rl["policy"]) == {"pool", "gaussian"} and set(rl["seed"]) == {0, 1}
    # (mean, min) x (none, cdf) x (kl 0, 0.1) per job (2 learners x 2 seeds) and policy
    assert rl.height == 2 * 2 * 2 * 8 and set(rl["run"]) == {f"{a}/{t}/kl{k}" for a in ("mean", "min")
                                                         for t in ("none", "cdf") for k in ("0", "0.1")}
    assert (rl["start_gold"] - rl["random"]).abs().max() < 1.0  # step 0 is pi_ref (Monte-Carlo for gaussian)
    job = json.loads(next((root / "out" / "jobs").rglob("*.json")).read_text())
    run = job["rl"]["pool"]["runs"][0]
    assert len(run["gold_prompt"]) == len(run["steps"]) and len(run["gold_prompt"][0]) == len(run["prompt_id"])


def test_report_sections_findings_and_replication(study_run):
    _, result, root = study_run
    report = result.report_path.read_text()
    assert "## Reinforcement learning on `ov` (pool policy)" in report
    assert "## Reinforcement learning on `ov` (gaussian policy)" in report
    pool, gaussian = report.split("(pool policy)")[1], report.split("(gaussian policy)")[1]
    assert "Adam lr 0.2," in pool.split("## ")[0] and "Adam lr 0.05," in gaussian.split("## ")[0]
    assert (root / "out" / "rl_ov_pool.png").stat().st_size > 10_000
    found = json.loads((root / "out" / "findings.json").read_text())
    keys = {f["key"] for f in found}
    for policy in ("pool", "gaussian"):
        assert {f"ov|all|rl-{policy}|overoptimisation", f"ov|all|rl-{policy}|min-vs-mean",
                f"ov|all|rl-{policy}|kl0.1-vs-kl0", f"ov|all|rl-{policy}|cdf-vs-none"} <= keys
    for where in ("ov|bt10", "ov|all|rl-pool", "ov|all|rl-gaussian"):  # members that differ vs independent ones
        assert f"{where}|min-vs-mean|linear-feat-vs-linear" in keys
    rl_found = [f for f in found if "|rl-" in f["key"]]
    assert all(f["effect"]["n_seeds"] == 2 and f["verdict"] for f in rl_found)
    assert "[RL, pool policy]" in report
    replicated = json.loads((root / "out" / "replication.json").read_text())
    assert any("|rl-pool|" in r["key"] for r in replicated)


def test_a_second_run_resumes_every_job(study_run):
    study, result, root = study_run
    again = run_study(study, root / "out", cache_dir=root / "cache", workers=1, progress=False)
    assert again.rl.equals(result.rl)


def test_rl_changes_the_digest_only_when_present():
    with_rl = study_from_dict({"rl": {"steps": 10}})
    without = study_from_dict({})
    job_a, job_b = jobs_of(with_rl)[0], jobs_of(without)[0]
    assert job_a.digest(with_rl) != job_b.digest(without)
    assert jobs_of(without)[0].digest(without) == job_b.digest(without)
    assert [j for j in jobs_of(with_rl) if j.kind == "human"][0].digest(with_rl) == \
        [j for j in jobs_of(without) if j.kind == "human"][0].digest(without)  # human jobs run no RL


@pytest.mark.parametrize("table, message", [
    ({"algo": "dpo"}, "algo"), ({"policies": ["pool", "pool"]}, "twice"), ({"policy": "pool"}, "policies"),
    ({"kl": [-1.0]}, "kl"), ({"transforms": ["log"]}, "transforms"), ({"gaussian": {"foo": 1}}, "foo"),
    ({"aggregations": ["avg"]}, "aggregations"), ({"steps": 0}, "steps")])
def test_bad_rl_tables_are_one_line_naming_the_table(table, message):
    with pytest.raises(EmbrmError) as e:
        study_from_dict({"rl": table}, "s.toml")
    assert str(e.value).startswith("s.toml [rl]: ") and message in str(e.value) and "\n" not in str(e.value)


def test_the_shipped_rl_study_is_valid():
    study = load_study("studies/rl.toml")
    assert study.rl is not None and study.rl.config_of("gaussian").lr == 0.05 and len(jobs_of(study)) == 16
