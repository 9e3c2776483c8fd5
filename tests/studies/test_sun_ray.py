"""Several setups of Sun et al.'s release as one study on a real local Ray: each job reads its own setup's arrays
from the (shared) path its declaration names, and the numbers are those of the local runner."""

from __future__ import annotations

import pytest

from embrm.data import write_sun_layout
from embrm.studies import load_study, run_study

STUDY = """name = "sun-setups"
seeds = [0]
human_pairs = []
methods = []
replicate = false
k = 2
aggregations = ["mean", "min"]
sun_metrics = true
datasets = [{datasets}]
[labels]
n_pairs = 80
pairs_per_prompt = 4
[[noise]]
name = "bt10"
beta = 10.0
[[learners]]
head = "linear"
"""


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("sun-setups")
    decls = [write_sun_layout(root / task, train_prompts=40, train_responses=6, test_prompts=8, test_responses=12,
                              dim=8, task=task, seed=seed, progress=False).declaration
             for seed, task in enumerate(("Harmless", "Helpful"))]
    path = root / "study.toml"
    path.write_text(STUDY.format(datasets=", ".join(f'"{d.relative_to(root)}"' for d in decls)))
    return path


def test_two_setups_run_on_a_real_local_ray_as_locally(local_ray, study_file, tmp_path, monkeypatch):
    # local_ray (tests/conftest.py): the session's one local Ray, 2 CPUs; the runner uses it and leaves it running.
    # This state directory is the driver's and the local run's; Ray's workers have the fixture's own.
    monkeypatch.setenv("EMBRM_STATE_DIR", str(tmp_path / "state"))
    study = load_study(study_file)
    on_ray = run_study(study, tmp_path / "ray", cache_dir=tmp_path / "cache", workers=2, runner="ray", progress=False)
    local = run_study(study, tmp_path / "local", cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert set(on_ray.bon["dataset"]) == {"sun-harmless-gemma2b", "sun-helpful-gemma2b"}
    order = ["dataset", "seed", "variant", "proxy"]
    assert on_ray.bon.sort(order).equals(local.bon.sort(order))
    assert on_ray.sun.sort(["dataset", "reward", "metric", "n"]).equals(local.sun.sort(["dataset", "reward", "metric",
                                                                                         "n"]))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.parquet"))  # nothing cached
