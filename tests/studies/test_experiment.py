"""`embrm run` on a tiny real study: results, report, resume after an interruption, and a real local Ray."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
from realdata import needs_data
from typer.testing import CliRunner

from embrm.cli import app
from embrm.evaluation import verdict
from embrm.studies._config import jobs_of, load_study
from embrm.studies._run import run_study
from embrm.studies._store import result_paths

pytestmark = [needs_data, pytest.mark.slow]  # studies on renamed_pool (MiniLM vectors), a real Ray

STUDY = """
name = "tiny"
seeds = [0, 1]
datasets = ["{root}/pool.toml"]
human_pairs = ["{root}/hh.jsonl"]
k = 3
aggregations = ["mean", "min", "uwo", "single"]
replicate = false
[embedder]
dtype = "float32"
[labels]
n_pairs = 300
[[noise]]
name = "flip25"
flip = 0.25
[[learners]]
head = "linear"
[[learners]]
head = "mlp"
hidden = [16, 8]
epochs = 10
"""


@pytest.fixture(scope="module")
def setup(renamed_pool, tmp_path_factory):
    """The renamed real pool (declared once, probes excluded) and 60 real HH pairs in a two-seed study."""
    root = tmp_path_factory.mktemp("study")
    (root / "study.toml").write_text(STUDY.format(root=renamed_pool))
    shutil.copytree(renamed_pool / "cache", root / "cache")
    return root


def test_run_writes_tables_report_and_plots(setup):
    out = setup / "res"
    result = CliRunner().invoke(app, ["run", str(setup / "study.toml"), "--out", str(out), "--cache-dir",
                                      str(setup / "cache"), "--workers", "2", "--format", "json", "--replicate"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["timings"]["n_jobs"] == 2 * 2 + 2 * 2
    bon = pl.read_parquet(out / "bon_summary.parquet")
    assert set(bon["variant"]) == {"pool", "pool-lc", "pool+probes"} and set(bon["dataset"]) == {"renamed-pool"}
    assert set(bon["proxy"]) == {"mean", "min", "uwo", "single", "warm", "length", "shortest"}
    assert bon.filter(pl.col("variant") == "pool+probes")["excluded_pick_rate"].null_count() == 0
    assert bon.filter(pl.col("variant") != "pool+probes")["excluded_pick_rate"].null_count() == bon.height * 2 // 3
    assert bon["length_correlation"].drop_nulls().len() > 0
    fits = pl.read_parquet(out / "fit_metrics.parquet")
    assert set(fits["against"]) == {"gold order", "human labels"} and fits.height == 8
    curves = pl.read_parquet(out / "bon_curves.parquet")
    assert {"agg", "n", "kl", "gold", "variant", "learner", "seed"} <= set(curves.columns)
    report = (out / "report.md").read_text()
    assert "## Findings" in report and "± " in report and "## Pairwise accuracy" in report
    assert "random pick (expected)" in report and "probes picked at n = N" in report
    assert "gain, length-controlled gold" in report and "Fitted length effect" in report
    # findings carry intervals over seeds and prompts; the halves of the prompts ran and were compared
    found = json.loads((out / "findings.json").read_text())
    measured = [f for f in found if f["effect"]]
    assert measured, "the study measured no finding"
    for f in measured:  # each verdict is the one its interval gives, and the interval brackets the estimate
        e = f["effect"]
        assert e["lo"] <= e["estimate"] <= e["hi"] and e["n_seeds"] == 2, f["key"]
        assert f["verdict"] == verdict(e["lo"], e["hi"], f["direction"]), f["key"]
    assert all(f["verdict"] == "not measured" for f in found if not f["effect"])
    halves = json.loads((out / "replication.json").read_text())
    assert halves and {"first", "second", "agreement"} <= set(halves[0])
    assert "### Replication" in report and summary["timings"]["n_replication_jobs"] == 2 * 2 * 2  # pools only
    assert len(list((out / "jobs").glob("renamed-pool.half2__*.json"))) == 2 * 2
    assert summary["replication"] == halves
    assert "## What the embedder saw" in report and "| `renamed-pool` | 180 |" in report
    embedding = json.loads((out / "study.json").read_text())["embedding"]
    assert embedding["renamed-pool"]["n_texts"] == 180 and embedding["renamed-pool"]["indistinguishable"] == []
    assert any(p.suffix == ".png" and p.stat().st_size > 10_000 for p in out.iterdir())
    assert json.loads((out / "study.json").read_text())["command"].startswith("embrm run")


def test_an_interrupted_study_resumes_without_rerunning_finished_jobs(setup):
    study = load_study(setup / "study.toml")
    out = setup / "resume"
    run_study(study, out, cache_dir=setup / "cache", workers=1, progress=False)
    jobs = jobs_of(study)
    first, lost = (result_paths(out / "jobs", j, study)[0] for j in jobs[:2])
    lost.unlink()  # as if the run had been killed before this job finished
    stamp = first.stat().st_mtime_ns
    result = run_study(study, out, cache_dir=setup / "cache", workers=1, progress=False)
    assert first.stat().st_mtime_ns == stamp and lost.exists()
    assert result.fits.height == len(jobs)


def test_a_result_from_other_data_is_not_reused(setup, renamed_pool, tmp_path):
    """Same study file, same names, other inputs (here one gold score edited in the pool file): the resumed study
    runs the job again instead of reporting the old result."""
    for name in ("pool.parquet", "pool.toml"):
        shutil.copy(renamed_pool / name, tmp_path / name)
    study = load_study(setup / "study.toml")
    study.seeds, study.human_pairs, study.methods, study.learners = [0], [], [], study.learners[:1]
    study.datasets = [replace(study.datasets[0], source=str(tmp_path / "pool.parquet"))]
    first = run_study(study, tmp_path / "out", cache_dir=setup / "cache", workers=1, progress=False)
    (job,) = jobs_of(study)
    jpath = result_paths(tmp_path / "out" / "jobs", job, study)[0]
    stamp = jpath.stat().st_mtime_ns
    pool = pl.read_parquet(tmp_path / "pool.parquet")
    pool.with_columns(score=pl.when(pl.int_range(pl.len()) == 0).then(0.999).otherwise("score")).write_parquet(
        tmp_path / "pool.parquet")
    again = run_study(study, tmp_path / "out", cache_dir=setup / "cache", workers=1, progress=False)
    assert jpath.stat().st_mtime_ns != stamp
    assert first.embedding["renamed-pool"].inputs != again.embedding["renamed-pool"].inputs


def test_a_damaged_job_result_is_run_again(setup, capsys):
    """A truncated curves file or JSON (a kill, a full disk, a copy cut short) is not a finished job: the resume
    says so in one line per file and runs that job again; no temporary file is left behind."""
    study = load_study(setup / "study.toml")
    study.seeds, study.human_pairs, study.methods, study.learners = [0], [], [], study.learners[:1]
    out = setup / "damaged"
    run_study(study, out, cache_dir=setup / "cache", workers=1, progress=False)
    (job,) = jobs_of(study)
    jpath, cpath = result_paths(out / "jobs", job, study)
    whole = cpath.read_bytes()
    for damage in (lambda: cpath.write_bytes(whole[: len(whole) // 2]), lambda: jpath.write_text('{"key": "')):
        damage()
        capsys.readouterr()
        result = run_study(study, out, cache_dir=setup / "cache", workers=1, progress=False)
        lines = [l for l in capsys.readouterr().err.splitlines() if "damaged result" in l]
        assert len(lines) == 1 and f"running job {job.key} again" in lines[0]
        assert result.curves.height == json.loads(jpath.read_text())["curves_rows"] > 0
    assert not [p for p in (out / "jobs").iterdir() if p.name.endswith(".tmp")]


def test_bad_config_is_rejected_before_any_work(setup, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('aggregations = ["mean", "best"]\n')
    result = CliRunner().invoke(app, ["run", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "\"best\" is not allowed" in result.output
    assert not (tmp_path / "r").exists()


def test_jobs_run_on_a_real_local_ray(local_ray, setup):
    # local_ray (tests/conftest.py): the session's one local Ray, 2 CPUs; the runner uses it and leaves it running
    study = load_study(setup / "study.toml")
    study.human_pairs, study.learners, study.methods = [], study.learners[:1], []
    result = run_study(study, setup / "ray", cache_dir=setup / "cache", workers=2, runner="ray", progress=False)
    local = run_study(study, setup / "local", cache_dir=setup / "cache", workers=1, progress=False)
    assert result.bon.height > 0
    assert result.bon.sort(["seed", "variant", "proxy"]).equals(local.bon.sort(["seed", "variant", "proxy"]))


def test_the_cli_and_a_study_worker_give_identical_numbers(setup, tmp_path, monkeypatch):
    """`embrm fit` + `embrm bon-sim` in this process reproduce a study job run in a worker process bit for bit
    (metrics and curves), with the default thread settings: nothing pinned, every core free to the CLI. They agree
    because both run on the one thread policy (embrm.core.fit_threads); before it, the CLI's torch used every core
    and a worker one, and an MLP wide enough for torch to split its work came out differently."""
    for pinned in ("EMBRM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(pinned, raising=False)
    study = load_study(setup / "study.toml")
    study.seeds, study.human_pairs, study.methods = [0, 1], [], []  # two jobs on two workers: worker processes
    study.learners = [replace(study.learners[1], params=(("epochs", 10), ("hidden", (256, 128))))]
    run_study(study, tmp_path / "one", cache_dir=setup / "cache", workers=2, progress=False)
    job = next(j for j in jobs_of(study) if j.seed == 1)
    run = json.loads(result_paths(tmp_path / "one" / "jobs", job, study)[0].read_text())
    curves = pl.read_parquet(result_paths(tmp_path / "one" / "jobs", job, study)[1]).drop("key")
    cli = CliRunner()
    declaration = str(Path(job.dataset.source).with_name("pool.toml"))  # the file the study's entry names
    fitted = cli.invoke(app, ["fit", declaration, "--dtype", "float32",
                              "--cache-dir", str(setup / "cache"), "--head", "mlp", "--hidden", "256,128", "--epochs",
                              "10", "-k", "3", "--flip", "0.25", "--n-pairs", "300", "--seed", "1",
                              "--out", str(tmp_path / "m"), "--format", "json"])
    assert fitted.exit_code == 0, fitted.output
    bon = cli.invoke(app, ["bon-sim", declaration, "--model",
                           str(tmp_path / "m"), "--cache-dir", str(setup / "cache"), "--agg", "mean,min,uwo,single",
                           "--with-excluded", "--out", str(tmp_path / "bon"), "--format", "json"])
    assert bon.exit_code == 0, bon.output
    assert json.loads(bon.stdout)["metrics"] == run["metrics"]
    assert json.loads(bon.stdout)["bon"] == run["bon"]
    assert pl.read_parquet(tmp_path / "bon" / "curves.parquet").equals(curves)


def test_a_replicated_rrm_study_embeds_each_halfs_own_augmentation(setup, tmp_path):
    """RRM draws other prompts' answers from the dataset it trains on: a half draws them from itself, so those
    texts are embedded (once) before the jobs run, on a cache that has never seen them."""
    study = load_study(setup / "study.toml")
    study.seeds, study.human_pairs, study.methods, study.replicate = [0], [], [], True
    study.learners = [replace(study.learners[0], length_control="rrm")]
    shutil.copytree(setup / "cache", tmp_path / "cache")
    result = run_study(study, tmp_path / "out", cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert result.timings.n_replication_jobs == 2 and result.replication is not None
    assert result.fits["learner"].to_list() == ["linear.rrm"]
