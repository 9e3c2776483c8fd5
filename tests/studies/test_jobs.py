"""How a study's jobs run: the tasks that share a member fit, and the vectors a worker reads."""

import json
from dataclasses import replace

import numpy as np
import pytest
from realdata import needs_data

from embrm.data._registry import dataset_spec, load_dataset
from embrm.embedding._embed import EmbedderConfig, cached_embeddings, embed_dataset
from embrm.studies import _jobs
from embrm.studies._config import Study, jobs_of


def test_jobs_sharing_a_member_fit_run_as_one_task():
    study = Study()
    jobs = jobs_of(study)
    tasks = _jobs.tasks_of(jobs, study)
    assert sorted(j.key for t in tasks for j in t) == sorted(j.key for j in jobs)
    shared = [t for t in tasks if len(t) > 1]
    assert all([j.learner.name for j in t] == ["mlp", "mlp.posthoc"] for t in shared)
    assert all(len({(j.dataset, j.noise, j.seed) for j in t}) == 1 for t in shared)
    runs = len(study.datasets) * len(study.noise) * len(study.seeds) + len(study.human_pairs) * len(study.seeds)
    assert len(shared) == runs


@pytest.fixture
def worker(monkeypatch):
    """A worker's loaders, empty, with nothing handed to it."""
    monkeypatch.setattr(_jobs, "_GIVEN", {})
    for loader in (_jobs._dataset, _jobs._embeddings, _jobs._augment):
        loader.cache_clear()
    yield _jobs
    for loader in (_jobs._dataset, _jobs._embeddings, _jobs._augment):
        loader.cache_clear()


@needs_data
@pytest.mark.slow  # renamed_pool: real MiniLM vectors
def test_a_worker_takes_the_vectors_it_was_handed_and_a_half_s_rows_of_its_whole(renamed_pool, worker, tmp_path):
    spec, cache = dataset_spec(str(renamed_pool / "pool.toml")), renamed_pool / "cache"
    embedded = embed_dataset(load_dataset(spec), EmbedderConfig(dtype="float32").build(), cache_dir=cache,
                             progress=False)
    spec_json = json.dumps(embedded.spec, sort_keys=True)
    for half in (1, 2):  # read from the cache: a half is its whole dataset's rows, bit for bit
        got = worker._embeddings(replace(spec, half=half), None, spec_json, str(cache))
        np.testing.assert_array_equal(got, cached_embeddings(load_dataset(replace(spec, half=half)), embedded.spec,
                                                             cache))
    worker._embeddings.cache_clear()
    given = np.arange(embedded.X.size, dtype=np.float32).reshape(embedded.X.shape)
    worker._GIVEN[spec, spec_json, False] = given
    nowhere = str(tmp_path / "no-cache")  # handed vectors: the cache is never read
    assert worker._embeddings(spec, None, spec_json, nowhere) is given
    rows = load_dataset(spec).responses["response_id"].is_in(
        load_dataset(replace(spec, half=1)).responses["response_id"].implode()).to_numpy()
    np.testing.assert_array_equal(worker._embeddings(replace(spec, half=1), None, spec_json, nowhere), given[rows])
