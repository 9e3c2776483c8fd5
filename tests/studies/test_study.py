"""Study configs: the default study, TOML parsing, and rejection of bad configs before any work starts."""

from pathlib import Path

import pytest

from embrm.core._errors import EmbrmError
from embrm.core._files import write_atomic
from embrm.studies._config import Study, jobs_of, load_study, study_from_dict


def test_default_study_grid():
    study = load_study(None)
    jobs = jobs_of(study)
    pools = [j for j in jobs if j.kind == "pool"]
    assert len(pools) == 2 * 2 * 6 * 3  # datasets x noise x learners x seeds
    assert len(jobs) - len(pools) == 6 * 3  # human pairs: learners x seeds
    assert {l.name for l in study.learners} == {"linear", "laplace", "mlp", "mlp.posthoc", "mlp.odin", "mlp.rrm"}
    assert len({j.key for j in jobs}) == len(jobs) and study.replicate and study.k == 5


def test_the_replication_halves_split_every_pools_prompts_in_two():
    from embrm.studies._run import replication_jobs

    study = load_study(None)
    halves = replication_jobs(study)
    assert len(halves) == 2 * len([j for j in jobs_of(study) if j.kind == "pool"])  # human pairs are not split
    assert {j.dataset.half for j in halves} == {1, 2} and {j.dataset.label.split(".half")[1] for j in halves} == {"1", "2"}
    assert len({j.key for j in halves + jobs_of(study)}) == len(halves) + len(jobs_of(study))


def test_toml_round_trip(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('name = "x"\nseeds = [3]\nk = 4\n[labels]\nn_pairs = 300\n'
                    '[[noise]]\nbeta = 1\n[[learners]]\nhead = "mlp"\nhidden = [8, 4]\nepochs = 5\n')
    study = load_study(path)
    assert study.name == "x" and study.k == 4 and study.labels == {"n_pairs": 300, "within_prompt": True}
    assert study.noise[0].name == "bt1" and study.noise[0].beta == 1.0
    assert study.learners[0].head_params() == {"epochs": 5, "hidden": (8, 4)}


def test_digest_changes_with_what_shapes_a_result():
    a, b = Study(), Study()
    b.k = 7
    job = jobs_of(a)[0]
    assert job.digest(a) == jobs_of(Study())[0].digest(Study())
    assert job.digest(a) != job.digest(b)
    b = Study()
    b.seeds = [0]  # seeds select jobs; they do not change a job's own result
    assert job.digest(a) == job.digest(b)


@pytest.mark.parametrize("doc, message", [
    ({"seed": [1]}, "unknown key 'seed': allowed keys are name, seeds"),
    ({"k": "ten"}, "key 'k' must be int"),
    ({"aggregations": ["mean", "max"]}, "aggregation = \"max\" is not allowed: use one of mean, min, median"),
    ({"learners": [{"head": "forest"}]}, "head = \"forest\" is not allowed: use one of linear, mlp, lgbm"),
    ({"learners": [{"head": "linear", "hidden": [4]}]}, "unknown key 'hidden'"),
    ({"learners": [{"head": "lgbm", "mode": "shared_trunk"}]}, "shared_trunk needs head = mlp"),
    ({"noise": [{"beta": 1, "flip": 0.1}]}, "exactly one of beta"),
    ({"noise": [{"flip": 0.7}]}, "flip must be a number in [0, 0.5), got 0.7"),
    ({"datasets": ["no-such-set"]}, "datasets[0]: unknown dataset 'no-such-set': use one of"),
    ({"datasets": ["adir"]}, "datasets[0]: 'adir' is a directory"),
    ({"datasets": [{"path": "x.csv", "exclude": {"column": "m"}}]}, "one of pattern"),
    ({"probes": True}, "unknown key 'probes'"),
    ({"labels": {"n_pairs": 5}}, "[labels]: n_pairs must be an integer in [20, 1000000], got 5"),
    ({"embedder": {"backend": "tf"}}, "backend = \"tf\" is not allowed"),
    ({"seeds": []}, "seeds is empty"),
])
def test_bad_configs_name_the_key_and_the_allowed_values(doc, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    with pytest.raises(EmbrmError, match=None) as e:
        study_from_dict(doc, "s.toml")
    assert message in str(e.value) and str(e.value).startswith("s.toml")


def test_bad_toml_is_one_error(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("k = [\n")
    with pytest.raises(EmbrmError, match="not valid TOML"):
        load_study(path)
    with pytest.raises(EmbrmError, match="no such study file"):
        load_study(tmp_path / "missing.toml")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "studies").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_studies_are_valid(path):
    study = load_study(path)
    assert jobs_of(study)


def test_a_datasets_table_declares_a_file_in_place(tmp_path):
    (tmp_path / "pool.csv").write_text("q,a,s,m\nx,1,0.5,ok\nx,2,0.1,bad\n")
    (tmp_path / "s.toml").write_text('human_pairs = []\n[[datasets]]\npath = "pool.csv"\nname = "mine"\n'
                                     'columns = { prompt = "q", response = "a", gold = "s", response_key = "m" }\n'
                                     'exclude = { column = "m", values = ["bad"], name = "probes" }\n')
    study = load_study(tmp_path / "s.toml")
    (spec,) = study.datasets
    assert spec.source == str(tmp_path / "pool.csv") and spec.label == "mine" and spec.exclude.name == "probes"
    assert {j.key.split("/")[0] for j in jobs_of(study)} == {"mine"}
    job = jobs_of(study)[0]
    protocol = job.protocol(study)
    assert protocol.labels.n_pairs == 1000 and protocol.k == 5 and protocol.with_excluded
    assert protocol.learner == job.learner and protocol.seed == job.seed


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")

    def killed_midway(tmp):
        tmp.write_text("a part of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(path, killed_midway)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
    write_atomic(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["result.json"]


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "..", ".", "a/b", "a\\b", "", "x" * 101])
def test_a_study_name_never_leaves_the_results_directory(name):
    with pytest.raises(EmbrmError, match="must be a plain name"):
        study_from_dict({"name": name}, "s.toml")


def test_the_report_names_only_the_probes_of_the_studys_own_datasets(tmp_path):
    import polars as pl

    from embrm.studies._report import SETTING, _probes
    from embrm.studies._store import ResultStore

    default = load_study(None)
    assert "NullModel" in SETTING.format(test=0.3, probes=_probes(default))
    other = study_from_dict({"name": "x", "datasets": ["alpaca-eval-bon16"]})
    assert _probes(other) == "" and "NullModel" not in SETTING.format(test=0.3, probes=_probes(other))
    store = ResultStore(tmp_path)  # a study without published picks writes no empty published_picks.parquet
    assert store.write_table("published_picks", pl.DataFrame()) is None
    assert not (tmp_path / "published_picks.parquet").exists()
    assert store.write_table("fit_metrics", pl.DataFrame({"a": [1]})) == tmp_path / "fit_metrics.parquet"
