"""A study on a generated Sun-layout dataset (`generate = "sun"`): Sun et al.'s numbers per job in
sun_metrics.parquet and a report section, the classification objective named in the learner (".clf"), the noise
finding ordered cleaner annotator first, and the shipped studies/sun2025.toml valid."""

import json
from pathlib import Path

import polars as pl
import pytest

from embrm.studies._config import jobs_of, load_study
from embrm.studies._run import run_study

STUDY = """name = "sun-tiny"
seeds = [0]
human_pairs = []
methods = []
replicate = false
k = 2
aggregations = ["mean", "min"]
sun_metrics = true

[[datasets]]
generate = "sun"
name = "sun-tiny"
params = { train_prompts = 30, train_responses = 5, test_prompts = 8, test_responses = 12, dim = 8, seed = 0 }

[labels]
n_pairs = 60
pairs_per_prompt = 3

[[noise]]                   # the noisier annotator first: the finding must still name the cleaner one first
name = "quality1"
beta = 1.0

[[noise]]
name = "perfect"
flip = 0.0

[[learners]]
head = "linear"

[[learners]]
head = "lgbm"
objective = "classification"
n_estimators = 5
num_leaves = 4
"""


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """The tiny study, run once in-process (the generated arrays written under a temporary state dir)."""
    root = tmp_path_factory.mktemp("sun-study")
    (root / "study.toml").write_text(STUDY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBRM_STATE_DIR", str(root / "state"))
        study = load_study(root / "study.toml")
        result = run_study(study, root / "out", cache_dir=root / "cache", workers=1, progress=False)
        yield study, result, root


def test_the_study_has_one_job_per_learner_and_annotator(study_run):
    study, result, root = study_run
    jobs = jobs_of(study)
    assert len(jobs) == 4 and {j.learner.name for j in jobs} == {"linear", "lgbm.clf"}
    assert {j.noise.name for j in jobs} == {"quality1", "perfect"}
    protocol = jobs[0].protocol(study)
    assert protocol.sun_metrics and protocol.labels.pairs_per_prompt == 3 and protocol.labels.n_pairs == 60
    generated = list((root / "state" / "generated").iterdir())  # written once, under the state dir
    assert len(generated) == 1 and any(generated[0].glob("embd_*_train.npy"))


def test_sun_metrics_table_and_report_section(study_run):
    _, result, root = study_run
    out = root / "out"
    sun = pl.read_parquet(out / "sun_metrics.parquet")
    assert {"dataset", "learner", "noise", "reward", "metric", "n", "value"} <= set(sun.columns)
    assert set(sun["dataset"]) == {"sun-tiny"} and set(sun["learner"]) == {"linear", "lgbm.clf"}
    assert set(sun["noise"]) == {"quality1", "perfect"} and set(sun["reward"]) == {"mean", "min", "first"}
    assert set(sun.filter(pl.col("metric") == "bon_gold")["n"]) == {2, 5, 10}
    assert sun.height == result.sun.height > 0
    report = result.report_path.read_text()
    assert "## Sun et al.'s numbers on `sun-tiny`" in report and "lgbm.clf" in report
    bon = pl.read_parquet(out / "bon_summary.parquet")
    assert set(bon["variant"]) == {"pool"} and not {"length", "shortest"} & set(bon["proxy"])  # no texts
    fits = pl.read_parquet(out / "fit_metrics.parquet")
    assert set(fits["learner"]) == {"linear", "lgbm.clf"} and (fits["n_test_pairs"] > 0).all()
    assert fits["length_accuracy"].null_count() == fits.height
    assert "length (baseline)" not in report and "Spearman with length" not in report  # no lengths to report


def test_the_noise_finding_names_the_cleaner_annotator_first(study_run):
    _, result, root = study_run
    found = json.loads((root / "out" / "findings.json").read_text())
    (noise,) = [f for f in found if f["key"].endswith("noise-costs-accuracy")]
    assert noise["key"] == "sun-tiny|perfect-vs-quality1|noise-costs-accuracy"
    assert noise["labels"] == "perfect vs quality1" and "(perfect − quality1)" in noise["measure"]
    assert noise["source"] == "Sun et al." and noise["direction"] == 1 and noise["effect"] is not None
    assert "perfect vs quality1 labels" in result.report_path.read_text()


def test_the_shipped_sun_study_validates():
    path = Path(__file__).parents[2] / "studies" / "sun2025.toml"
    study = load_study(path)
    jobs = jobs_of(study)
    assert study.sun_metrics and study.replicate is False
    assert {j.learner.name for j in jobs} == {"mlp", "mlp.clf", "mlp.k1", "lgbm", "lgbm.clf"}
    assert {j.noise.name for j in jobs} == {"quality1", "quality10", "perfect"}
    (spec,) = study.datasets
    assert spec.source == "sun" and dict(spec.params)["test_responses"] == 100
    assert len(jobs) == 5 * 3 * 2
    assert jobs[0].protocol(study).labels.pairs_per_prompt == 5
