"""Hostile options and hostile neighbours of a command's outputs: values out of bounds refused at the option before
any work, one writer per result (model dirs, score files, study dirs), a study directory owned by one study, a full
disk failing in one line with no partial outputs, edited model manifests, and names that can never become paths
outside --out. Runs on a synthetic pool whose vectors are already cached (nothing loads a model)."""

import contextlib
import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from badinput import Bad, assert_clean_failure, snapshot
from synthdata import pool_file_with_cache
from typer.testing import CliRunner

from embrm.cli import app
from embrm.core import EmbrmError, exclusive, file_stem, staged, write_atomic
from embrm.embedding import EmbeddingCache, template_halves
from embrm.evaluation import pyplot, save_figure
from embrm.rewards._persist import load_ensemble, manifest_digest, save_ensemble
from embrm.studies._store import ResultStore, result_paths

POOL, CACHE, MODEL = "{root}/pool.parquet", "{root}/cache", "{root}/model"
WATCH = ("",)  # the whole fixture directory: a refused command changes nothing anywhere under it


def fit(id, match, *options):
    return Bad(id, ("fit", POOL, "--cache-dir", CACHE, "--head", "linear", "--out", f"{{root}}/out/{id}",
                    *options), match, WATCH)


def bon(id, match, *options):
    return Bad(id, ("bon-sim", POOL, "--model", MODEL, "--cache-dir", CACHE, "--out", f"{{root}}/out/{id}",
                    *options), match, WATCH)


def embed(id, match, *options):
    return Bad(id, ("embed", POOL, "--cache-dir", CACHE, *options), match, WATCH)


TEMPLATE = r"--template: template .* must hold \{response\} once and \{prompt\} at least once"
AGG = r"must be a number in \[-1e\+06, 1e\+06\]"
TEMP = r"--temperature: temperature must be a number in \[1e-06, 1e\+06\]"
CASES = [
    # templates that parse but do not say what they seem to
    fit("template_escaped_prompt", TEMPLATE, "--template", "{{prompt}} {response}"),
    fit("template_escaped_response", TEMPLATE, "--template", "{prompt} {{response}}"),
    fit("template_two_responses", TEMPLATE, "--template", "{prompt} {response} {response}"),
    fit("template_no_prompt", TEMPLATE, "--template", "Q: {response}"),
    fit("template_positional", r"--template: .*field \{\} is not allowed", "--template", "{} {prompt} {response}"),
    fit("template_index", r"--template: .*field \{0\} is not allowed", "--template", "{0} {prompt} {response}"),
    fit("template_attribute", r"field \{prompt\.upper\} is not allowed", "--template", "{prompt.upper} {response}"),
    fit("template_item", r"field \{prompt\[0\]\} is not allowed", "--template", "{prompt[0]} {response}"),
    fit("template_other_field", r"field \{score\} is not allowed", "--template", "{prompt} {response} {score}"),
    fit("template_response_spec", r"field \{response\} is not allowed", "--template", "{prompt} {response:>9}"),
    fit("template_response_conversion", r"field \{response\} is not allowed", "--template", "{prompt} {response!r}"),
    fit("template_bad_spec", r"--template: .*Unknown format code", "--template", "{prompt:zz} {response}"),
    fit("template_bad_conversion", r"--template: .*conversion", "--template", "{prompt!x} {response}"),
    fit("template_open_brace", r"--template: .*Single '\{'", "--template", "{prompt} {response} {"),
    fit("template_close_brace", r"--template: .*Single '\}'", "--template", "{prompt} } {response}"),
    fit("template_empty", TEMPLATE, "--template", ""),
    # sizes of an embedder's work
    fit("batch_size_huge", r"--batch-size: batch_size must be an integer in \[1, 65536\]", "--batch-size",
        str(10 ** 12)),
    fit("batch_size_2_70", r"--batch-size: batch_size must be an integer", "--batch-size", str(2 ** 70)),
    fit("batch_size_zero", r"--batch-size: batch_size must be an integer", "--batch-size", "0"),
    fit("batch_size_negative", r"--batch-size: batch_size must be an integer", "--batch-size", "-5"),
    embed("embed_batch_size_huge", r"--batch-size: batch_size must be an integer", "--batch-size", str(10 ** 12)),
    fit("max_length_zero", r"--max-length: max_length must be an integer in \[1, 1048576\]", "--max-length", "0"),
    fit("max_length_huge", r"--max-length: max_length must be an integer", "--max-length", str(10 ** 9)),
    fit("layer_huge", r"--layer: layer must be an integer in \[-4096, 4095\]", "--layer", "99999"),
    fit("max_tokens_zero", r"--max-tokens: max_tokens must be an integer", "--max-tokens", "0"),
    embed("views_empty", r"--views: views '': write LAYER:POOLING pairs", "--views", ""),
    embed("views_commas", r"--views: views ',,': write LAYER:POOLING", "--views", ",,"),
    embed("views_no_pooling", r"--views: .*write LAYER:POOLING", "--views", "3"),
    embed("views_layer_huge", r"--views: views: layer 99999 must be an integer", "--views", "99999:last"),
    embed("views_too_many", r"--views: views: 300 views; at most 256",
          "--views", ",".join(f"{i}:last" for i in range(300))),
    # a split that leaves one side empty (12 prompts)
    fit("test_size_tiny", r"--test-size: test_size 0\.001 of 12 prompts leaves the test side empty",
        "--test-size", "0.001"),
    fit("test_size_near_one", r"--test-size: test_size 0\.999 of 12 prompts leaves the training side empty",
        "--test-size", "0.999"),
    # aggregation parameters that overflow the arithmetic: refused at the option, not after scoring
    bon("lcb_beta_1e308", rf"--lcb-beta: lcb_beta {AGG}, got 1e\+308", "--agg", "lcb", "--lcb-beta", "1e308"),
    bon("lcb_beta_minus_1e308", rf"--lcb-beta: lcb_beta {AGG}", "--agg", "lcb", "--lcb-beta", "-1e308"),
    bon("lcb_beta_1e7", rf"--lcb-beta: lcb_beta {AGG}, got 10000000", "--lcb-beta", "1e7"),
    bon("lam_1e308", rf"--lam: lam {AGG}, got 1e\+308", "--agg", "uwo", "--lam", "1e308"),
    bon("lam_minus_inf", rf"--lam: lam {AGG}, got -Infinity", "--lam", "-inf"),
    bon("temperature_1e-320", rf"{TEMP}, got 1e-320", "--agg", "softmin", "--temperature", "1e-320"),
    bon("temperature_1e308", rf"{TEMP}, got 1e\+308", "--agg", "softmin", "--temperature", "1e308"),
    bon("temperature_negative", rf"{TEMP}, got -1", "--temperature", "-1"),
    bon("temperature_nan", rf"{TEMP}, got NaN", "--temperature", "nan"),
    # results that are not this command's to replace
    fit("fit_out_is_the_model", r"--out .*model already exists and holds results: pass --overwrite",
        "--out", MODEL),
    bon("bon_out_is_a_file", r"--out .*pool\.parquet is a file, not a directory", "--out", POOL),
    Bad("run_out_is_another_study", ("run", "{root}/tiny.toml", "--out", "{root}/other-study", "--cache-dir", CACHE),
        r"--out .*other-study holds the results of study 'someone-else', not 'tiny': pass --overwrite", WATCH),
    Bad("run_out_holds_other_files", ("run", "{root}/tiny.toml", "--out", "{root}/notes", "--cache-dir", CACHE),
        r"--out .*notes holds files that are not an embrm study's results", WATCH),
    # an edited model manifest
    bon("edited_split", r"model dir .*edited-model is corrupt \(manifest\.json was edited after it was written",
        "--model", "{root}/edited-model"),
    bon("overlapping_split", r"prompt 'q\d+' .*is both a training and a held-out prompt: the split was edited",
        "--model", "{root}/overlap-model"),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """pool.parquet (12 prompts x 6 answers) with its vectors cached, a model fitted on it, the same model with an
    edited split (digest left stale) and one whose split overlaps (digest recomputed), a tiny study, a directory
    of another study's results and one of unrelated notes."""
    root = tmp_path_factory.mktemp("hostile-outputs")
    pool_file_with_cache(root)
    res = CliRunner().invoke(app, ["fit", str(root / "pool.parquet"), "--cache-dir", str(root / "cache"),
                                   "--head", "linear", "-k", "2", "--out", str(root / "model")])
    assert res.exit_code == 0, res.output
    _edited_model(root, "edited-model", moved=3, digest=False)
    _edited_model(root, "overlap-model", moved=0, digest=True)
    (root / "tiny.toml").write_text('name = "tiny"\ndatasets = ["pool.parquet"]\nhuman_pairs = []\nmethods = []\n')
    (root / "other-study").mkdir()
    (root / "other-study" / ".study").write_text('{"study": "someone-else"}\n')
    (root / "other-study" / "report.md").write_text("someone else's report\n")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("my notes\n")
    return root


def _edited_model(root: Path, name: str, moved: int, digest: bool) -> None:
    """A copy of the fitted model whose split was edited: `moved` training prompts moved to the test side (the
    digest left as it was), or (moved=0) one training prompt added to the test side too, the digest recomputed."""
    target = root / name
    target.mkdir()
    (target / "weights.npz").write_bytes((root / "model" / "weights.npz").read_bytes())
    doc = json.loads((root / "model" / "manifest.json").read_text())
    split = doc["split"]
    if moved:
        split["test_prompts"] += split["train_prompts"][:moved]
        split["train_prompts"] = split["train_prompts"][moved:]
    else:
        split["test_prompts"].append(split["train_prompts"][0])
    if digest:
        doc["digest"] = manifest_digest(doc)
    (target / "manifest.json").write_text(json.dumps(doc, indent=2))


def test_the_table_is_big_and_distinct():
    assert len(CASES) >= 45 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_option_fails_cleanly(case, root):
    assert_clean_failure(case, root)


# ------------------------------------------------------------------------------------------- one writer per result

@pytest.mark.parametrize("command", ["fit", "bon-sim", "score"])
def test_a_result_being_written_is_refused_at_once(root, command):
    """Another process holds the target's lock (the same lock file, another open file description): the command
    fails before any work in one line, and writes nothing."""
    target = root / "out" / f"locked-{command}"
    args = {"fit": ["fit", POOL, "--cache-dir", CACHE, "--head", "linear", "--out", str(target)],
            "bon-sim": ["bon-sim", POOL, "--model", MODEL, "--cache-dir", CACHE, "--out", str(target)],
            "score": ["score", MODEL, POOL, "--cache-dir", CACHE, "--out", str(target)]}[command]
    with exclusive(target):
        case = Bad(f"locked-{command}", tuple(args), r"--out .* is being written by another embrm process", WATCH)
        assert_clean_failure(case, root)
    assert not target.exists()


def test_two_fits_into_one_model_dir_at_once_keep_one_model(root, tmp_path):
    """Two real processes race for --out: one saves, the other fails in one line; the model dir is whole."""
    out = tmp_path / "M"
    argv = [sys.executable, "-m", "embrm", "fit", str(root / "pool.parquet"), "--cache-dir", str(root / "cache"),
            "--head", "linear", "--out", str(out)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes in ([0, 2], [0, 0]), results  # [0, 0]: the second started after the first had finished ...
    if codes == [0, 0]:
        pytest.skip("the two processes did not overlap")  # ... then it must have refused a non-empty --out: rare
    (err,) = [e for code, _, e in results if code == 2]
    assert len(err.strip().splitlines()) == 1 and "being written by another embrm process" in err
    assert json.loads((out / "manifest.json").read_text())["format"] == "embrm-reward-ensemble"


def test_a_model_dir_made_while_fitting_is_never_replaced(root, tmp_path):
    """save_ensemble without overwrite renames only onto nothing (or an empty dir): a model another writer put
    there meanwhile is kept and the save fails in one line."""
    ensemble, _ = load_ensemble(root / "model")
    target = tmp_path / "M"
    save_ensemble(target, ensemble)
    before = snapshot([target])
    with pytest.raises(EmbrmError, match="already exists"):
        save_ensemble(target, ensemble)
    assert snapshot([target]) == before
    (tmp_path / "empty").mkdir()
    save_ensemble(tmp_path / "empty", ensemble)  # an empty directory is a fine target


def test_a_study_dir_belongs_to_one_study(tmp_path):
    store = ResultStore(tmp_path / "results")
    assert store.owner() is None and store.check_owner("a", overwrite=False) is None
    store.claim("a", overwrite=False)
    (store.out / "report.md").write_text("a's report\n")
    assert store.owner() == "a" and store.check_owner("a", overwrite=False) is None  # the same study resumes
    with pytest.raises(EmbrmError, match="holds the results of study 'a', not 'b'"):
        store.claim("b", overwrite=False)
    assert (store.out / "report.md").exists()
    store.claim("b", overwrite=True)
    assert store.owner() == "b" and not (store.out / "report.md").exists()
    legacy = ResultStore(tmp_path / "old")  # a directory an older embrm wrote: its study.json names the study
    legacy.out.mkdir()
    (legacy.out / "study.json").write_text(json.dumps({"study": {"name": "default"}}))
    assert legacy.owner() == "default"


# ------------------------------------------------------------------------------------------- a full disk

def _file_size_limit(n_bytes: int):
    def limit():  # in the child: writes past n_bytes fail with EFBIG, as on a full disk (not a signal)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))
    return limit


def test_bon_sim_on_a_full_disk_fails_in_one_line_and_leaves_no_partial_results(root, tmp_path):
    out = tmp_path / "bon"
    argv = [sys.executable, "-m", "embrm", "bon-sim", str(root / "pool.parquet"), "--model", str(root / "model"),
            "--cache-dir", str(root / "cache"), "--out", str(out)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(3000))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and f"{out}/" in lines[0] and "File too large" in lines[0]
    assert not out.exists() or not any(out.iterdir())
    assert not list(tmp_path.glob(".*stage*"))  # the staging directory is gone too


SMALL_STUDY = ('name = "small"\ndatasets = ["pool.parquet"]\nhuman_pairs = []\nmethods = []\nseeds = [0]\n'
               'replicate = false\nnoise = [{ name = "bt10", beta = 10.0 }]\n[[learners]]\nhead = "linear"\n')


def test_a_study_on_a_full_disk_keeps_its_previous_report(root, tmp_path):
    """The tables, plots and report of a run are staged: a run that fails on a full disk leaves the previous
    report (here marked) and no staging directory, and says which file in one line."""
    (root / "small.toml").write_text(SMALL_STUDY)
    out = tmp_path / "results"
    argv = [sys.executable, "-m", "embrm", "run", str(root / "small.toml"), "--out", str(out), "--cache-dir",
            str(root / "cache")]
    assert subprocess.run(argv, capture_output=True, text=True, timeout=300).returncode == 0
    (out / "report.md").write_text("the previous report\n")
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(3000))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and lines[-1].startswith(f"error: {out}/") and "free space" in lines[-1], res.stderr
    assert (out / "report.md").read_text() == "the previous report\n" and not list(out.glob(".stage-*"))


def test_a_warm_command_on_a_full_disk_reads_a_cache_in_parts(root, tmp_path):
    """Merging parts is only for speed: with no room for the merged part, a warm embed (which merges) still reads
    every vector and succeeds."""
    cache = tmp_path / "cache"
    shutil.copytree(root / "cache", cache)
    (part_dir,) = [d for d in cache.iterdir() if d.is_dir()]
    parts = EmbeddingCache.open(part_dir)
    parts.write_part([f"{i:064x}" for i in range(5)], np.ones((5, 384), np.float32))
    argv = [sys.executable, "-m", "embrm", "embed", str(root / "pool.parquet"), "--cache-dir", str(cache),
            "--format", "json"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(20_000))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["n_cached"] == 72 and len(EmbeddingCache.open(part_dir).manifest().parts) == 2


@contextlib.contextmanager
def file_size_limit_here(n_bytes: int):
    """The same limit in this process, restored after the block (the soft limit may go back up to the hard one)."""
    old_limit, old_handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_figure_on_a_full_disk_names_its_file_and_leaves_no_half_image(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot(np.random.default_rng(0).random(1000))
    with file_size_limit_here(2000), pytest.raises(OSError) as e:
        save_figure(fig, tmp_path / "curves.png")
    assert e.value.filename == str(tmp_path / "curves.png") and list(tmp_path.iterdir()) == []


def test_a_failed_library_write_is_one_line_naming_the_file(tmp_path):
    frame = pl.DataFrame({"a": np.arange(10)})

    def failing(path):
        raise pl.exceptions.ComputeError("parquet: underlying IO error: No space left on device (os error 28)")

    with pytest.raises(EmbrmError, match=r"t\.parquet: could not write it \(parquet: .*No space left"):
        write_atomic(tmp_path / "t.parquet", failing)
    with pytest.raises(OSError) as e:
        write_atomic(tmp_path / "missing-dir" / "t.parquet", frame.write_parquet)
    assert e.value.filename == str(tmp_path / "missing-dir" / "t.parquet")
    assert list(tmp_path.iterdir()) == []


def test_staged_results_appear_together_or_not_at_all(tmp_path):
    with staged(tmp_path / "out") as stage:
        (stage / "a.txt").write_text("a")
        (stage / "sub").mkdir()
        (stage / "sub" / "b.txt").write_text("b")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == \
        ["out/a.txt", "out/sub/b.txt"]
    with pytest.raises(EmbrmError, match=r"out/c\.txt: could not write"), staged(tmp_path / "out") as stage:
        (stage / "c.txt").write_text("c")
        raise EmbrmError(f"{stage}/c.txt: could not write it")
    assert not (tmp_path / "out" / "c.txt").exists() and len(list(tmp_path.iterdir())) == 1


# ------------------------------------------------------------------------------------------- names are names

HOSTILE_NAMES = ["../../../../escaped", "/etc/passwd", "..", ".", "a/../../b", "..\\..\\x", "nul\x00byte",
                 "new\nline", ".hidden", "~/x", "a" * 400, "", "pool+../../probes", "ok-name_1.2"]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_any_name_becomes_a_plain_file_name(name, tmp_path):
    stem = file_stem(name)
    assert stem and "/" not in stem and "\\" not in stem and "\x00" not in stem and not stem.startswith(".")
    assert len(stem) <= 150 and (tmp_path / f"{stem}.png").resolve().parent == tmp_path.resolve()


def test_every_study_writer_keeps_hostile_names_inside_out(tmp_path):
    """The writers' own guard, under the declaration checks: a job key, a method's and a pool's name with path
    parts still land inside the results directory."""
    out = tmp_path / "results"

    class Named:
        def __init__(self, **kw):
            self.__dict__.update(kw)

        def write(self, where):
            where.mkdir(parents=True)
            return {"x": where}

    store = ResultStore(out)
    written = [store.write_method(Named(name="../../../escaped"))["x"],
               store.write_active(Named(dataset="../../../escaped"))["x"]]
    job = type("Job", (), {"key": "../../x/../../escaped", "digest": lambda self, study: "d1"})()
    written += list(result_paths(out / "jobs", job, None))
    for path in written:
        assert out.resolve() in path.resolve().parents, path
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()


def test_template_halves_render_literal_braces_as_written():
    head, tail = template_halves("{{x}} {prompt}: {response} {{{prompt}}}")
    assert head.format(prompt="P") + "R" + tail.format(prompt="P") == "{x} P: R {P}"
