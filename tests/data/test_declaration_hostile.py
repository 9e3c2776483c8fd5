"""Hostile dataset declarations, study files and generator parameters: each is refused while it is read, before any
data is loaded, embedded or written, with exit 2 and one `error:` line naming the file and the key (or, through the
Python API, one EmbrmError line naming the parameter).

Names that become parts of paths (a dataset's, an exclusion's, a study's, an embedder's, a noise's) are plain names;
generator parameters have finite, bounded rules and a memory ceiling; `prompts` must allow the study's split; regular
expressions polars would read differently (possessive quantifiers, atomic groups, class set operations) are refused;
TOML nested too deep for the parser or for our messages is refused. After each CLI case nothing exists under the
fixture root that was not there before, outside the case's own directory (`cases/<id>`, where its --out points: a
name like ../../../../x would land at the root itself)."""

import hashlib
import math
import os
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from badinput import Bad, assert_clean_failure

from embrm.core import EmbrmError, check_size
from embrm.data import (
    Exclusion,
    half_of,
    load_dataset,
    overopt_dataset,
    overopt_truth,
    split_prompts,
    synthetic_pool,
)
from embrm.studies._config import load_study, min_prompts

FILES: dict[str, str] = {}  # path under the fixture root -> text
DECL = '[dataset]\npath = "pool.csv"\n'  # a declaration that loads (pool.csv beside it)
EXCL = DECL + '[dataset.exclude]\ncolumn = "prompt"\n'
GEN = '[dataset]\ngenerate = "overopt"\n'
STUDY = 'human_pairs = []\nmethods = []\n[[learners]]\nhead = "linear"\n'  # + datasets: a study that loads
POOL = 'datasets = ["pool.csv"]\nhuman_pairs = []\nmethods = []\n'  # no table yet: top-level keys may follow
PLAIN = r"must be a plain name \(1-100 letters, digits, '\.', '_', '-'; not starting with '\.'\): it names files"


def _out(id: str) -> tuple[str, ...]:
    return "--out", f"{{root}}/cases/{id}/out", "--cache-dir", f"{{root}}/cases/{id}/cache"


def decl(id: str, text: str, match: str, command: str = "fit") -> Bad:
    """`embrm fit|bon-sim|embed decl/<id>.toml`: the error names the declaration, then matches `match`."""
    FILES[f"decl/{id}.toml"] = text
    args = {"fit": ("fit", f"{{root}}/decl/{id}.toml", *_out(id)),
            "bon-sim": ("bon-sim", f"{{root}}/decl/{id}.toml", "--model", "{root}/model", *_out(id)),
            "embed": ("embed", f"{{root}}/decl/{id}.toml", "--cache-dir", f"{{root}}/cases/{id}/cache")}[command]
    return Bad(id, args, rf"decl/{re.escape(id)}\.toml.*{match}")


def study(id: str, text: str, match: str) -> Bad:
    """`embrm run study/<id>.toml`: refused while the study loads."""
    FILES[f"study/{id}.toml"] = text
    return Bad(id, ("run", f"{{root}}/study/{id}.toml", *_out(id)), rf"study/{re.escape(id)}\.toml.*{match}")


def table(body: str) -> str:
    """A study whose one pool is declared in place."""
    return STUDY + '[[datasets]]\npath = "pool.csv"\n' + body


def generated(params: str, extra: str = "replicate = false\n") -> str:
    return extra + STUDY + f'[[datasets]]\ngenerate = "overopt"\nparams = {{ {params} }}\n'


DEEP_ARRAY = "x = " + "[" * 2000 + "]" * 2000 + "\n"  # tomllib itself recurses: RecursionError
DEEP_TABLE = "[" + ".".join(["x"] * 3000) + "]\n"  # parses: nested 3000 deep, refused before any message shows it
DIGITS = "9" * 5000  # past Python's 4300-digit int limit: tomllib raises a plain ValueError

CASES = [
    # 1. names that become parts of paths: the dataset's and the exclusion's, in fit, bon-sim and embed
    decl("name_traversal", DECL + 'name = "../../../../nm_escaped"\n',
         r'\[dataset\]: name = "\.\./\.\./\.\./\.\./nm_escaped" ' + PLAIN),
    decl("name_traversal_bon", DECL + 'name = "../../../../nm_escaped"\n', r"\[dataset\]: name = .*" + PLAIN,
         "bon-sim"),
    decl("name_traversal_embed", DECL + 'name = "../x"\n', r"\[dataset\]: name = .*" + PLAIN, "embed"),
    decl("name_absolute", DECL + 'name = "/tmp/abs"\n', r'name = "/tmp/abs" ' + PLAIN),
    decl("name_slash", DECL + 'name = "a/b"\n', r'name = "a/b" ' + PLAIN),
    decl("name_backslash", DECL + 'name = "a\\\\b"\n', r'name = "a\\\\b" ' + PLAIN),
    decl("name_nul", DECL + 'name = "a\\u0000b"\n', r'name = "a\\u0000b" ' + PLAIN),
    decl("name_newline", DECL + 'name = "a\\nb"\n', r'name = "a\\nb" ' + PLAIN),
    decl("name_empty", DECL + 'name = ""\n', r'name = "" ' + PLAIN),
    decl("name_too_long", DECL + f'name = "{"n" * 101}"\n', r"name = \"n{101}\" " + PLAIN),
    decl("name_dot", DECL + 'name = "."\n', r'name = "\." ' + PLAIN),
    decl("name_dotdot", DECL + 'name = ".."\n', r'name = "\.\." ' + PLAIN),
    decl("name_hidden", DECL + 'name = ".hidden"\n', r'name = "\.hidden" ' + PLAIN),
    decl("name_fullwidth", DECL + 'name = "ｐｏｏｌ"\n', r'name = "\\uff50.*" ' + PLAIN),
    decl("name_cyrillic_a", DECL + 'name = "p\u043eol"\n', r'name = "p\\u043eol" ' + PLAIN),
    decl("name_space", DECL + 'name = "my pool"\n', r'name = "my pool" ' + PLAIN),
    decl("name_number", DECL + "name = 7\n", r"\[dataset\]: name must be a string"),
    decl("name_bool", DECL + "name = true\n", r"\[dataset\]: name must be a string"),
    decl("exclusion_traversal", EXCL + 'values = ["q1"]\nname = "../../../../escaped"\n',
         r'\[dataset\] exclude: name = "\.\./\.\./\.\./\.\./escaped" ' + PLAIN),
    decl("exclusion_traversal_bon", EXCL + 'values = ["q1"]\nname = "../../../../escaped"\n',
         r"\[dataset\] exclude: name = .*" + PLAIN, "bon-sim"),
    decl("exclusion_name_slash", EXCL + 'pattern = "q1"\nname = "a/b"\n', r'exclude: name = "a/b" ' + PLAIN),
    decl("exclusion_name_empty", EXCL + 'pattern = "q1"\nname = ""\n', r'exclude: name = "" ' + PLAIN),
    decl("exclusion_name_number", EXCL + 'pattern = "q1"\nname = 5\n', r"exclude: name = 5 " + PLAIN),
    decl("exclusion_value_bool", EXCL + "values = [true]\n", r"exclude: values must be a non-empty list of strings"),
    # 5. regular expressions polars reads differently from Python's re (or not at all)
    decl("regex_possessive", EXCL + 'pattern = "a++"\n', r"exclude: pattern 'a\+\+' has a possessive quantifier"),
    decl("regex_possessive_group", EXCL + 'pattern = "(a|b)*+"\n', r"exclude: .* has a possessive quantifier"),
    decl("regex_possessive_optional", EXCL + 'pattern = "q?+1"\n', r"exclude: .* has a possessive quantifier"),
    decl("regex_possessive_bon", EXCL + 'pattern = "q{1,2}+"\n', r"exclude: .* has a possessive quantifier",
         "bon-sim"),
    decl("regex_atomic_group", EXCL + 'pattern = "(?>q1)"\n', r"exclude: .* an atomic group"),
    decl("regex_posix_class", EXCL + 'pattern = "[[:alpha:]]"\n', r"exclude: .* inside a class, which the matcher"),
    decl("regex_intersection", EXCL + 'pattern = "[a&&b]"\n', r"exclude: .* inside a class, which the matcher"),
    decl("regex_end_of_text", EXCL + 'pattern = "q1\\\\Z"\n', r"exclude: .* is not supported by the matcher"),
    decl("regex_empty_min", EXCL + 'pattern = "q{,2}"\n', r"exclude: .* is not supported by the matcher"),
    decl("regex_comment", EXCL + 'pattern = "(?#x)q"\n', r"exclude: .* is not supported by the matcher"),
    # 4. prompts = N in a declaration
    decl("prompts_zero", DECL + "prompts = 0\n", r"\[dataset\]: prompts must be a positive integer"),
    decl("prompts_negative", DECL + "prompts = -1\n", r"prompts must be a positive integer .*got -1"),
    decl("prompts_fraction", DECL + "prompts = 1.5\n", r"prompts must be a positive integer .*got 1\.5"),
    decl("prompts_bool", DECL + "prompts = true\n", r"prompts must be a positive integer .*got true"),
    decl("prompts_text", DECL + 'prompts = "10"\n', r'prompts must be a positive integer .*got "10"'),
    decl("prompts_huge", DECL + "prompts = 1099511627776\n",
         r"prompts must be a positive integer \(at most 2147483647"),
    decl("prompts_nan", DECL + "prompts = nan\n", r"prompts must be a positive integer .*got NaN"),
    # 3. a generated dataset declared in a file
    decl("gen_features_fraction", GEN + "params = { n_features = 1.5 }\n",
         r"params: overopt_dataset: n_features must be an integer in \[1, 4096\], got 1\.5"),
    decl("gen_prompts_nan", GEN + "params = { n_prompts = nan }\n", r"n_prompts must be an integer in .*got NaN"),
    decl("gen_prompts_inf", GEN + "params = { n_prompts = inf }\n", r"n_prompts must be an integer in .*got Infinity"),
    decl("gen_features_huge", GEN + "params = { n_features = 1000000000 }\n",
         r"n_features must be an integer in \[1, 4096\], got 1000000000"),
    decl("gen_penalty_huge", GEN + "params = { hack_penalty = 1e308 }\n",
         r"hack_penalty must be a number in \[0, 100\], got 1e\+308"),
    decl("gen_hack_inf", GEN + "params = { hack = -inf }\n", r"hack must be a number in \[-100, 100\], got -Infinity"),
    decl("gen_dim_text", GEN + 'params = { dim = "big" }\n', r'dim must be an integer in \[2, 65536\], got "big"'),
    decl("gen_candidates_bool", GEN + "params = { n_candidates = true }\n", r"n_candidates must be an integer"),
    decl("gen_prompts_list", GEN + "params = { n_prompts = [100] }\n", r"n_prompts must be an integer .*got \[100\]"),
    decl("gen_too_big", GEN + "params = { n_prompts = 10000000, n_candidates = 1000000 }\n",
         r"GB of embeddings \(at most 4 GB\): use fewer prompts"),
    decl("gen_name_traversal", GEN + 'name = "../gen"\n', r'name = "\.\./gen" ' + PLAIN),
    decl("gen_unknown_param", GEN + "params = { chunk_rows = 1 }\n", r"params: unknown key 'chunk_rows'"),
    decl("sun_disk", '[dataset]\ngenerate = "sun"\nparams = { train_prompts = 1099511627776 }\n',
         r"params: sun_dataset: .* GiB of disk under .*, but .* GiB is available: use fewer prompts"),
    decl("sun_dim_zero", '[dataset]\ngenerate = "sun"\nparams = { dim = 0 }\n', r"params: dim must be an integer"),
    # 2. the file itself
    decl("deep_array", DEEP_ARRAY, r": not valid TOML \(arrays or inline tables nested too deep to read\)"),
    decl("deep_table", DEEP_TABLE, r": tables or arrays nested more than 16 deep"),
    decl("deep_params", GEN + "[dataset.params." + ".".join(["x"] * 40) + "]\n", r"nested more than 16 deep"),
    decl("too_many_digits", DECL + f"prompts = {DIGITS}\n", r"not valid TOML \(a number has more than 4300 digits\)"),
    # the --exclude option is the same rule
    Bad("option_exclude_possessive", ("fit", "{root}/decl/pool.csv", "--exclude", "prompt=q1++",
                                      *_out("option_exclude_possessive")), r"--exclude: .* possessive quantifier"),
    # studies: refused while the study loads
    study("study_name_hidden", POOL + 'name = ".results"\n', r'name = "\.results" ' + PLAIN),
    study("study_name_fullwidth", POOL + 'name = "ｒｅｓｕｌｔｓ"\n', r"name = .* " + PLAIN),
    study("study_dataset_traversal", table('name = "../../../../escaped"\n'),
          r'datasets\[0\]: name = "\.\./\.\./\.\./\.\./escaped" ' + PLAIN),
    study("study_exclusion_traversal", table('exclude = { column = "prompt", values = ["q1"], name = "../../x" }\n'),
          r'datasets\[0\] exclude: name = "\.\./\.\./x" ' + PLAIN),
    study("study_exclusion_possessive", table('exclude = { column = "prompt", pattern = "q++" }\n'),
          r"datasets\[0\] exclude: .* possessive quantifier"),
    study("study_declared_file_traversal", POOL.replace('"pool.csv"', '"../decl/name_traversal.toml"'),
          r"datasets\[0\]: .*name_traversal\.toml \[dataset\]: name = .*" + PLAIN),
    study("embedder_name_traversal", POOL + '[[embedders]]\nname = "../e"\n',
          r'\[\[embedders\]\] #1: name = "\.\./e" ' + PLAIN),
    study("embedder_name_nul", POOL + '[[embedders]]\nname = "e\\u0000"\n', r'#1: name = "e\\u0000" ' + PLAIN),
    study("noise_name_dotdot", POOL + '[[noise]]\nname = ".."\nbeta = 1.0\n', r'#1: name = "\.\." ' + PLAIN),
    study("noise_name_newline", POOL + '[[noise]]\nname = "a\\nb"\nbeta = 1.0\n', r'name = "a\\nb" ' + PLAIN),
    # 4. prompts a split cannot use, found at load
    study("study_prompts_3_halves", table("prompts = 3\n"),
          r"datasets\[0\] prompts = 3 is too few prompts: with test_size 0\.2 .* replication halves need 6 "
          r"\(replicate = false: 3\): give at least 6"),
    study("study_prompts_5_halves", table("prompts = 5\n"), r"prompts = 5 is too few prompts: .*give at least 6"),
    study("study_prompts_2", "replicate = false\n" + table("prompts = 2\n"),
          r"prompts = 2 is too few prompts: with test_size 0\.2 .*a split needs 3: give at least 3"),
    study("study_prompts_3_half_test", "replicate = false\ntest_size = 0.5\n" + table("prompts = 3\n"),
          r"prompts = 3 is too few prompts: with test_size 0\.5 .*give at least 4"),
    study("study_prompts_zero", table("prompts = 0\n"), r"datasets\[0\]: prompts must be a positive integer"),
    study("study_prompts_fraction", table("prompts = 1.5\n"), r"prompts must be a positive integer .*got 1\.5"),
    study("study_prompts_bool", table("prompts = true\n"), r"prompts must be a positive integer .*got true"),
    study("study_prompts_huge", table("prompts = 1e12\n"), r"prompts must be a positive integer .*got 1000000000000"),
    study("human_pairs_prompts_2", 'datasets = []\nmethods = []\n[[human_pairs]]\npath = "pool.csv"\nprompts = 2\n',
          r"human_pairs\[0\] prompts = 2 is too few prompts: .*a split needs 3"),
    # 3. generated pools in a study
    study("study_gen_prompts_3", generated("n_prompts = 3", ""),
          r"datasets\[0\] params n_prompts = 3 is too few prompts: .*give at least 6"),
    study("study_gen_features_fraction", generated("n_features = 1.5"),
          r"n_features must be an integer in \[1, 4096\]"),
    study("study_gen_prompts_nan", generated("n_prompts = nan"), r"n_prompts must be an integer in .*got NaN"),
    study("study_gen_features_huge", generated("n_features = 1000000000"), r"n_features must be an integer in"),
    study("study_gen_penalty_huge", generated("hack_penalty = 1e308"), r"hack_penalty must be a number in \[0, 100\]"),
    study("study_gen_spread_negative", generated("prompt_spread = -1.0"), r"prompt_spread must be a number in"),
    study("study_gen_threshold_nan", generated("threshold = nan"), r"threshold must be a number in .*got NaN"),
    # 6. the numeric neighbours
    study("seed_nan", POOL + "seeds = [nan]\n", r"key 'seeds\[0\]' must be int, got float NaN"),
    study("seed_fraction", POOL + "seeds = [0.5]\n", r"key 'seeds\[0\]' must be int"),
    study("k_float", POOL + "k = 1e3\n", r"key 'k' must be int, got float 1000\.0"),
    study("k_too_many_digits", POOL + f"k = {DIGITS}\n", r"not valid TOML: a number has more than 4300 digits"),
    study("test_size_inf", POOL + "test_size = inf\n", r"test_size must be a number in \(0, 1\), got Infinity"),
    study("test_size_text", POOL + 'test_size = "0.2"\n', r"key 'test_size' must be float, got str"),
    study("n_pairs_nan", POOL + "[labels]\nn_pairs = nan\n", r"key 'n_pairs' must be int, got float NaN"),
    study("pairs_per_prompt_fraction", POOL + "[labels]\npairs_per_prompt = 1.5\n",
          r"key 'pairs_per_prompt' must be int"),
    study("flip_nan", POOL + "[[noise]]\nflip = nan\n", r"flip must be a number in \[0, 0\.5\), got NaN"),
    study("beta_text", POOL + '[[noise]]\nbeta = "10"\n', r"key 'beta' must be float, got str"),
    study("noise_pairs_fraction", POOL + "[[noise]]\nbeta = 1.0\nn_pairs = 100.5\n", r"key 'n_pairs' must be int"),
    study("learner_k_bool", POOL + '[[learners]]\nhead = "linear"\nk = true\n',
          r"k \(ensemble size\) must be an integer in \[1, 256\], got true"),
    study("n_grid_fraction", POOL + "n_grid = [1, 2.5]\n", r"n_grid value must be an integer in .*got 2\.5"),
    # 2. the study file itself
    study("study_deep_array", DEEP_ARRAY, r": not valid TOML: arrays or inline tables nested too deep to read"),
    study("study_deep_table", DEEP_TABLE, r": tables or arrays nested more than 16 deep"),
    study("study_deep_rl", POOL + "[rl." + ".".join(["x"] * 30) + "]\n", r": tables or arrays nested more than 16"),
]


def _tree(root: Path, skip: Path) -> dict[str, str]:
    """Every directory and file under root (sha256 of files) except those under `skip`."""
    state = {}
    for dirpath, dirs, files in os.walk(root):
        here = Path(dirpath)
        if here == skip or skip in here.parents:
            continue
        state |= {str(here / d): "dir" for d in dirs}
        state |= {str(here / f): hashlib.sha256((here / f).read_bytes()).hexdigest() for f in files}
    return state


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Every declaration and study of the table beside a tiny pool (8 prompts x 5 answers with gold), and a saved
    K = 2 linear model of it (random vectors: bon-sim refuses the declarations before it needs any)."""
    from embrm.pipeline._protocol import LabelConfig, Protocol
    from embrm.pipeline._steps import fit as fit_model

    root = tmp_path_factory.mktemp("hostile-declarations")
    rng = np.random.default_rng(0)
    pool = pl.DataFrame({"prompt_id": [f"p{i // 5}" for i in range(40)], "prompt": [f"q{i // 5}" for i in range(40)],
                         "response": [f"answer {i}" for i in range(40)], "gold": rng.random(40)})
    for where in ("decl", "study"):
        (root / where).mkdir()
        pool.write_csv(root / where / "pool.csv")
    for path, text in FILES.items():
        (root / path).write_text(text, encoding="utf-8")
    ds = load_dataset(root / "decl" / "pool.csv")
    X = rng.standard_normal((len(ds.responses), 8)).astype(np.float32)
    fitted = fit_model(ds, X, Protocol(labels=LabelConfig(n_pairs=40), k=2, test_size=0.5), progress=False)
    fitted.save(root / "model", ds, embed_spec={"backend": "none (random)"})
    return root


def test_the_table_is_big_distinct_and_every_file_is_used():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    assert {c.args[0] for c in CASES} == {"fit", "bon-sim", "embed", "run"}
    named = {a.split("{root}/")[-1] for c in CASES for a in c.args if a.endswith(".toml")}
    assert set(FILES) == named


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_declaration_is_one_line_and_creates_nothing_outside_its_case(case, root):
    own = root / "cases" / case.id
    before = _tree(root, own)
    assert_clean_failure(case, root)
    assert _tree(root, own) == before, f"{case.id}: something changed under the fixture root outside {own}"


def test_the_same_files_without_the_hostile_values_load(root):
    """The controls: the cases fail on the value they name, not on the files around it."""
    assert load_dataset(root / "decl" / "pool.csv").name == "pool.csv"
    for good in ('name = "v1.2_pool-a"\n', 'prompts = 8\n'):
        (root / "cases" / "good").mkdir(parents=True, exist_ok=True)
        path = root / "cases" / "good" / "decl.toml"
        path.write_text(DECL.replace("pool.csv", "../../decl/pool.csv") + good)
        assert len(load_dataset(path).responses) == 40
    ok = root / "study" / "good.toml"
    ok.write_text(POOL + 'name = "good"\n[[embedders]]\nname = "e-1"\n[[noise]]\nname = "n.1"\nbeta = 1.0\n')
    assert load_study(ok).name == "good"
    ok.write_text("replicate = false\n" + table("prompts = 3\n"))  # the fewest a test_size 0.2 split can use
    assert load_study(ok).datasets[0].prompts == 3
    ok.write_text(generated("n_prompts = 6, n_candidates = 3", ""))  # replicated halves of 3 prompts each
    assert dict(load_study(ok).datasets[0].params)["n_prompts"] == 6


def test_min_prompts_is_what_a_split_and_its_halves_need():
    def trains(p: int, test_size: float) -> bool:  # the split the jobs make leaves 2 training prompts
        try:
            return len(split_prompts([f"p{i}" for i in range(p)], test_size)[0]) >= 2
        except EmbrmError:
            return False

    for test_size in (0.01, 0.1, 0.2, 0.25, 0.5, 0.75, 0.9, 0.99):
        need = min_prompts(test_size)
        assert trains(need, test_size) and not trains(need - 1, test_size), test_size
        assert min_prompts(test_size, halves=True) == 2 * need


@pytest.mark.parametrize("pattern", [r"^(NullModel|gpt4_gamed)$|_verbose$", r"\+\+", "[+]+", "a+?", "(?:ab)+",
                                     "[a-z]{2}"])
def test_patterns_both_engines_read_alike_are_kept(pattern):
    rule = Exclusion.checked("model", pattern, "probes", "test")
    values = ["NullModel", "x_verbose", "++", "ab", "A"]
    mask = rule.mask(pl.DataFrame({"model": values}), "test").to_list()
    assert mask == [re.search(pattern, v) is not None for v in values]


NAN, INF = math.nan, math.inf
API = [
    ("overopt_features_fraction", lambda: overopt_dataset(n_features=1.5), r"n_features must be an integer in \[1, "),
    ("overopt_prompts_nan", lambda: overopt_dataset(n_prompts=NAN), r"n_prompts must be an integer .*got NaN"),
    ("overopt_prompts_inf", lambda: overopt_dataset(n_prompts=INF), r"n_prompts must be an integer .*got Infinity"),
    ("overopt_features_huge", lambda: overopt_dataset(n_features=10 ** 9), r"n_features must be an integer in"),
    ("overopt_penalty_huge", lambda: overopt_dataset(hack_penalty=1e308), r"hack_penalty must be a number in \[0, 100"),
    ("overopt_dim_float", lambda: overopt_dataset(dim=8.0), r"dim must be an integer in \[2, 65536\], got 8\.0"),
    ("overopt_seed_bool", lambda: overopt_dataset(seed=True), r"seed must be an integer in \[0, 4294967295\]"),
    ("overopt_chunk_zero", lambda: overopt_dataset(4, 4, chunk_rows=0), r"chunk_rows must be an integer in \[1, "),
    ("overopt_truth_threshold", lambda: overopt_truth(threshold=NAN), r"threshold must be a number .*got NaN"),
    ("overopt_cells", lambda: overopt_truth(n_prompts=10 ** 7, n_candidates=10 ** 6), r"at most 4 GB"),
    ("synthetic_features_fraction", lambda: synthetic_pool(n_features=1.5), r"n_features must be an integer in"),
    ("synthetic_prompts_nan", lambda: synthetic_pool(n_prompts=NAN), r"n_prompts must be an integer .*got NaN"),
    ("synthetic_penalty_huge", lambda: synthetic_pool(hack_penalty=1e308), r"hack_penalty must be a number in"),
    ("synthetic_members_zero", lambda: synthetic_pool(k_members=0), r"k_members must be an integer in \[1, 1024\]"),
    ("synthetic_range_reversed", lambda: synthetic_pool(3, (5, 2)), r"1 <= lo <= hi <= 1000000"),
    ("synthetic_range_three", lambda: synthetic_pool(3, (1, 2, 3)), r"give a pool size or a \(lo, hi\) range"),
    ("synthetic_range_fraction", lambda: synthetic_pool(3, (1, 2.5)), r"give a pool size or a \(lo, hi\) range"),
    ("synthetic_texts_word", lambda: synthetic_pool(3, 2, texts="yes"), r"texts must be true or false"),
    ("synthetic_memory", lambda: synthetic_pool(10 ** 7, 10 ** 6, dim=65_536),
     r"synthetic_pool: 10000000 prompts x up to 1000000 candidates x 65536 dims would take \d+\.\d GiB of memory, "
     r"but \d+\.\d GiB is available: use fewer"),
    ("ceiling", lambda: check_size("plan", "8 GiB of rows", 8 << 30, "use fewer", free=1 << 30),
     r"plan: 8 GiB of rows would take 8\.0 GiB of memory, but 1\.0 GiB is available: use fewer"),
    ("half_bool", lambda: half_of(None, True), r"half must be 1 or 2, got true"),
    ("exclusion_api_name", lambda: Exclusion.checked("model", "x", "../x", "api"), r'api: name = "\.\./x" ' + PLAIN),
    ("exclusion_api_pattern", lambda: Exclusion.checked("model", 5, "probes", "api"), r"pattern must be a non-empty"),
    ("load_dataset_name", lambda: load_dataset("overopt", name="a/b"), r'dataset: name = "a/b" ' + PLAIN),
]


@pytest.mark.parametrize("call,match", [(c, m) for _, c, m in API], ids=[i for i, _, _ in API])
def test_generator_and_api_values_are_refused_in_one_line(call, match):
    with pytest.raises(EmbrmError, match=match) as e:
        call()
    assert "\n" not in str(e.value)
