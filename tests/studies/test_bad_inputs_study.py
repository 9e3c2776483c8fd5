"""Bad study files and bad experiment values, through the real CLI (`embrm run`, `embrm fit`, `embrm bon-sim`).

Every case must fail cleanly (tests/badinput.py): exit 2, one `error:` line naming the study file and key (or the
option), and nothing written: the results directory, the model directories and the cache stay as they were.
The study files, a tiny pool and a tiny saved model are built once; most cases fail while the study loads."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from badinput import Bad, assert_clean_failure

WATCH = ("results", "cache", "models", "model")
VALID = 'datasets = ["pool.csv"]\nhuman_pairs = []\nmethods = []\n'  # a study that loads (a file beside it)
STUDIES: dict[str, str | bytes] = {}
DECLARATIONS = {"broken.decl.toml": "[dataset\n", "to-dir.decl.toml": '[dataset]\npath = "adir"\n'}


def study(id: str, text: str | bytes, match: str, *options: str) -> Bad:
    """`embrm run <id>.toml`; the error must name the file, then match `match` (the key and what is allowed)."""
    STUDIES[id] = text
    return Bad(id, ("run", f"{{root}}/{id}.toml", "--out", f"{{root}}/results/{id}", "--cache-dir", "{root}/cache",
                    *options), rf"{id}\.toml.*{match}", WATCH)


def loaded(id: str, text: str, match: str) -> Bad:
    """A study that loads but whose data does not fit its role: found when the data is read, named by its file."""
    case = study(id, text, match)
    return Bad(id, case.args, match, WATCH)


def value(id: str, text: str, match: str) -> Bad:
    """A valid study with one bad value added."""
    return study(id, VALID + text, match)


def learner(id: str, table: str, match: str) -> Bad:
    return study(id, VALID + "[[learners]]\n" + table, rf"\[\[learners\]\] #1: {match}")


def noise(id: str, table: str, match: str) -> Bad:
    return study(id, VALID + "[[noise]]\n" + table, rf"\[\[noise\]\] #1: {match}")


def run_option(id: str, match: str, *options: str) -> Bad:
    """A valid study with a bad `embrm run` option."""
    STUDIES[id] = VALID
    return Bad(id, ("run", f"{{root}}/{id}.toml", *options), match, WATCH)


def fit(id: str, match: str, *options: str) -> Bad:
    """`embrm fit` with a bad experiment value: refused by the Protocol before the data is read."""
    return Bad(id, ("fit", "{root}/pool.csv", "--out", f"{{root}}/models/{id}", "--cache-dir", "{root}/cache",
                    *options), match, WATCH)


def bon(id: str, match: str, *options: str) -> Bad:
    """`embrm bon-sim` over the tiny saved model (K = 2) with a bad evaluation value."""
    return Bad(id, ("bon-sim", "{root}/pool.csv", "--model", "{root}/model", "--out", f"{{root}}/results/{id}",
                    "--cache-dir", "{root}/cache", *options), match, WATCH)


INT_RANGE = r"must be an integer in \[{}, {}\], got {}"
SEEDS_3000 = "seeds = [" + ", ".join(map(str, range(3000))) + "]\n"

CASES = [
    # the file itself
    study("syntax", 'k = 3\nname = "x\n', r"not valid TOML: .*line 2"),
    study("duplicate_key", "k = 1\nk = 2\n", r"not valid TOML: .*line 2"),
    study("empty", "", r"the study file is empty"),
    study("only_comments", "# nothing here\n", r"the study file is empty"),
    study("not_utf8", b'name = "\xff\xfe"\n', r"not UTF-8 text \(byte \d+\)"),
    Bad("missing_file", ("run", "{root}/nope.toml", "--out", "{root}/results/x"), r"nope\.toml: no such study file",
        WATCH),
    Bad("file_is_directory", ("run", "{root}/adir", "--out", "{root}/results/x"), r"adir: is a directory", WATCH),
    # top-level keys
    value("unknown_key", "probes = true\n", r"unknown key 'probes': allowed keys are name, seeds"),
    value("name_traversal", 'name = "../../x"\n', r'name = "\.\./\.\./x" must be a plain name'),
    value("name_absolute", 'name = "/tmp/x"\n', r'name = "/tmp/x" must be a plain name'),
    value("name_dotdot", 'name = ".."\n', r'name = "\.\." must be a plain name'),
    value("name_empty", 'name = ""\n', r'name = "" must be a plain name'),
    value("name_too_long", f'name = "{"a" * 101}"\n', r"must be a plain name \(1-100 letters"),
    value("name_not_string", "name = 5\n", r"key 'name' must be str, got int 5"),
    value("seeds_not_list", "seeds = 3\n", r"key 'seeds' must be list"),
    value("seed_negative", "seeds = [0, -1]\n", r"seeds\[1\]: seed " + INT_RANGE.format(0, 4294967295, -1)),
    value("seed_too_big", "seeds = [4294967296]\n", r"seeds\[0\]: seed must be an integer in \[0, 4294967295\]"),
    value("seed_float", "seeds = [1.5]\n", r"key 'seeds\[0\]' must be int, got float 1.5"),
    value("seed_string", 'seeds = ["a"]\n', r"key 'seeds\[0\]' must be int"),
    value("seeds_empty", "seeds = []\n", r"seeds is empty"),
    value("seeds_repeated", "seeds = [1, 1]\n", r"seeds #2 repeats 1"),
    value("k_zero", "k = 0\n", r"k \(ensemble size\) " + INT_RANGE.format(1, 256, 0)),
    value("k_huge", "k = 100000\n", r"k \(ensemble size\) " + INT_RANGE.format(1, 256, 100000)),
    value("k_float", "k = 2.5\n", r"key 'k' must be int"),
    value("k_string", 'k = "ten"\n', r"key 'k' must be int, got str \"ten\""),
    value("k_bool", "k = true\n", r"key 'k' must be int, got bool"),
    value("test_size_zero", "test_size = 0\n", r"test_size must be a number in \(0, 1\), got 0"),
    value("test_size_one", "test_size = 1.0\n", r"test_size must be a number in \(0, 1\), got 1\.0"),
    value("test_size_nan", "test_size = nan\n", r"test_size must be a number in \(0, 1\), got NaN"),
    value("test_size_string", 'test_size = "20%"\n', r"key 'test_size' must be float"),
    value("lam_inf", "lam = inf\n", r"lam must be a number in \[-1e\+06, 1e\+06\], got Infinity"),
    value("lcb_beta_nan", "lcb_beta = nan\n", r"lcb_beta must be a number in \[-1e\+06, 1e\+06\], got NaN"),
    value("lcb_beta_string", 'lcb_beta = "high"\n', r"key 'lcb_beta' must be float"),
    value("with_excluded_string", 'with_excluded = "yes"\n', r"key 'with_excluded' must be bool"),
    value("n_grid_word", 'n_grid = "dense"\n', r"n_grid must be 'all' or 'log' or a list"),
    value("n_grid_zero", "n_grid = [1, 0]\n", r"n_grid value must be an integer in \[1, 1000000\], got 0"),
    value("n_grid_number", "n_grid = 8\n", r"key 'n_grid' must be str or list"),
    value("aggregation_unknown", 'aggregations = ["best"]\n', r'aggregation = "best" is not allowed: use one of mean'),
    value("aggregations_empty", "aggregations = []\n", r"aggregations must be a non-empty list"),
    value("aggregation_twice", 'aggregations = ["mean", "mean"]\n', r"name one twice"),
    value("aggregations_string", 'aggregations = "mean"\n', r"key 'aggregations' must be list"),
    value("aggregation_number", "aggregations = [1]\n", r"key 'aggregations\[0\]' must be str"),
    study("method_unknown", 'datasets = ["pool.csv"]\nhuman_pairs = []\nmethods = ["magic"]\n',
          r'methods entry = "magic" is not allowed'),
    study("method_twice", 'datasets = ["pool.csv"]\nhuman_pairs = []\nmethods = ["moe", "moe"]\n',
          r'methods #2 repeats "moe"'),
    study("too_many_jobs", VALID + "replicate = false\n" + SEEDS_3000, r"36000 jobs .*at most 10000"),
    study("too_many_jobs_with_halves", VALID + "seeds = [" + ", ".join(map(str, range(400))) + "]\n",
          r"14400 jobs \(datasets x noise x learners x seeds\) with the replication halves \(replicate = false drops "
          r"them\): at most 10000"),
    # [embedder]
    value("embedder_not_table", 'embedder = "st"\n', r"key 'embedder' must be dict"),
    value("embedder_backend", '[embedder]\nbackend = "tf"\n', r'\[embedder\]: backend = "tf" is not allowed'),
    value("embedder_unknown_key", '[embedder]\ndevices = "cuda"\n', r"\[embedder\]: unknown key 'devices'"),
    value("embedder_dtype", '[embedder]\ndtype = "float16"\n', r"\[embedder\]: .*dtype='float16' is not valid"),
    value("embedder_max_length", "[embedder]\nmax_length = 0\n",
          r"\[embedder\]: .*max_length must be an integer in \[1, 1048576\] or None, got 0"),
    value("embedder_batch_size", "[embedder]\nbatch_size = 0\n",
          r"\[embedder\]: batch_size " + INT_RANGE.format(1, 65536, 0)),
    value("embedder_model_path", '[embedder]\nmodel = "/nonexistent/model"\n', r"\[embedder\]: model path"),
    value("embedder_template", '[embedder]\ntemplate = "{prompt} only"\n',
          r"\[embedder\]: template .* must hold \{response\} once and \{prompt\} at least once"),
    value("embedder_template_field", '[embedder]\ntemplate = "{prompt} {response} {score}"\n',
          r"\[embedder\]: template .*field \{score\} is not allowed"),
    # [labels]
    value("n_pairs_few", "[labels]\nn_pairs = 5\n", r"\[labels\]: n_pairs " + INT_RANGE.format(20, 1000000, 5)),
    value("n_pairs_huge", "[labels]\nn_pairs = 1000000000\n", r"\[labels\]: n_pairs must be an integer in"),
    value("n_pairs_float", "[labels]\nn_pairs = 2e3\n", r"\[labels\]: key 'n_pairs' must be int"),
    value("within_prompt_string", '[labels]\nwithin_prompt = "yes"\n', r"key 'within_prompt' must be bool"),
    value("labels_unknown_key", "[labels]\nbeta = 3\n", r"\[labels\]: unknown key 'beta'"),
    # [[noise]]
    noise("noise_both", "beta = 1\nflip = 0.1\n", r"give exactly one of beta .* or flip"),
    noise("noise_neither", 'name = "x"\n', r"give exactly one of beta"),
    noise("flip_one", "flip = 1.0\n", r"flip must be a number in \[0, 0\.5\), got 1\.0"),
    noise("flip_half", "flip = 0.5\n", r"flip must be a number in \[0, 0\.5\), got 0\.5"),
    noise("flip_negative", "flip = -0.1\n", r"flip must be a number in \[0, 0\.5\), got -0\.1"),
    noise("beta_zero", "beta = 0\n", r"beta must be a finite number > 0, got 0\.0"),
    noise("beta_negative", "beta = -3\n", r"beta must be a finite number > 0, got -3\.0"),
    noise("beta_inf", "beta = inf\n", r"beta must be a finite number > 0, got Infinity"),
    noise("beta_string", 'beta = "high"\n', r"key 'beta' must be float"),
    noise("noise_name_path", 'name = "../x"\nbeta = 1\n', r'name = "\.\./x" must be a plain name'),
    noise("noise_unknown_key", "beta = 1\nrate = 2\n", r"unknown key 'rate'"),
    study("noise_names_repeated", VALID + '[[noise]]\nname = "a"\nbeta = 1\n[[noise]]\nname = "a"\nflip = 0.1\n',
          r'\[\[noise\]\] name #2 repeats "a"'),
    value("noise_not_table", "noise = [1]\n", r"\[\[noise\]\] #1: expected a table, got int"),
    value("noise_empty", "noise = []\n", r"pools need at least one \[\[noise\]\]"),
    # [[learners]]
    value("learners_empty", "learners = []\n", r"nothing to run: give at least one learner"),
    value("learners_not_list", 'learners = { head = "mlp" }\n', r"key 'learners' must be list"),
    learner("learner_no_head", 'mode = "bootstrap"\n', r"needs head = one of linear, mlp, lgbm"),
    learner("learner_unknown_head", 'head = "forest"\n', r'head = "forest" is not allowed: use one of linear'),
    learner("learner_head_number", "head = 5\n", r"head = 5 is not allowed"),
    learner("learner_unknown_mode", 'head = "mlp"\nmode = "bagging"\n', r'mode = "bagging" is not allowed'),
    learner("trunk_needs_mlp", 'head = "lgbm"\nmode = "shared_trunk"\n', r"mode shared_trunk needs head = mlp"),
    learner("length_control_unknown", 'head = "mlp"\nlength_control = "shorter"\n',
            r'length_control = "shorter" is not allowed: use one of none, posthoc, posthoc_global, odin, rrm'),
    learner("length_control_number", 'head = "mlp"\nlength_control = 1\n', r"length_control = 1 is not allowed"),
    learner("odin_needs_linear_or_mlp", 'head = "lgbm"\nlength_control = "odin"\n',
            r"length_control odin .* needs head = linear or mlp"),
    learner("odin_not_on_a_trunk", 'head = "mlp"\nmode = "shared_trunk"\nlength_control = "odin"\n',
            r"length_control odin .* mode = independent or bootstrap"),
    learner("odin_weight_negative", 'head = "mlp"\nlength_control = "odin"\nlam_length = -1\n',
            r"lam_length must be a finite number >= 0"),
    learner("odin_weight_without_odin", 'head = "mlp"\nlam_length = 1\n', r"unknown key 'lam_length'"),
    study("replicate_not_bool", 'replicate = "yes"\n', r"key 'replicate' must be bool"),
    learner("linear_heads_needs_linear", 'head = "mlp"\nmode = "linear_heads"\n',
            r"mode linear_heads needs head = linear"),
    learner("hidden_text", 'head = "mlp"\nhidden = ["a"]\n',
            r'hidden must be a list of 1 to 8 positive integers \(each <= 8192\), got \["a"\]'),
    learner("hidden_zero", 'head = "mlp"\nhidden = [16, 0]\n', r"hidden must be a list .*got \[16, 0\]"),
    learner("hidden_empty", 'head = "mlp"\nhidden = []\n', r"hidden must be a list .*got \[\]"),
    learner("hidden_number", 'head = "mlp"\nhidden = 8\n', r"hidden must be a list .*got 8"),
    learner("hidden_huge", 'head = "mlp"\nhidden = [100000]\n', r"hidden must be a list .*got \[100000\]"),
    learner("hidden_deep", 'head = "mlp"\nhidden = [8, 8, 8, 8, 8, 8, 8, 8, 8]\n', r"hidden must be a list of 1 to 8"),
    learner("epochs_zero", 'head = "mlp"\nepochs = 0\n', r"epochs " + INT_RANGE.format(1, 10000, 0)),
    learner("lr_negative", 'head = "mlp"\nlr = -0.1\n', r"lr must be a number in \(0, 1\], got -0\.1"),
    learner("lr_string", 'head = "mlp"\nlr = "fast"\n', r'lr must be a number in \(0, 1\], got "fast"'),
    learner("batch_size_zero", 'head = "mlp"\nbatch_size = 0\n', r"batch_size must be an integer in \[1, 10000000\]"),
    learner("mlp_dtype", 'head = "mlp"\ndtype = "int8"\n', r'dtype must be one of "auto", .*got "int8"'),
    learner("mlp_objective", 'head = "mlp"\nobjective = "hinge"\n', r'objective must be one of "bt", "classification"'),
    learner("weight_decay_negative", 'head = "mlp"\nweight_decay = -1\n', r"weight_decay must be a finite number >= 0"),
    learner("param_of_another_head", 'head = "linear"\nhidden = [4]\n', r"unknown key 'hidden': head linear takes C"),
    learner("random_state", 'head = "mlp"\nrandom_state = 3\n', r"unknown key 'random_state'"),
    learner("lgbm_one_leaf", 'head = "lgbm"\nnum_leaves = 1\n', r"num_leaves " + INT_RANGE.format(2, 131072, 1)),
    learner("lgbm_many_trees", 'head = "lgbm"\nn_estimators = 1000000\n',
            r"n_estimators must be an integer in \[1, 10000\]"),
    learner("lgbm_learning_rate", 'head = "lgbm"\nlearning_rate = 0\n', r"learning_rate must be a number in \(0, 1\]"),
    learner("lgbm_colsample", 'head = "lgbm"\ncolsample_bytree = 0.0\n',
            r"colsample_bytree must be a number in \(0, 1\]"),
    learner("lgbm_min_child", 'head = "lgbm"\nmin_child_samples = 0\n',
            r"min_child_samples must be an integer in \[1,"),
    learner("linear_C_zero", 'head = "linear"\nC = 0\n', r"C must be a finite number > 0, got 0"),
    learner("linear_C_nan", 'head = "linear"\nC = nan\n', r"C must be a finite number > 0, got NaN"),
    study("learners_repeated", VALID + '[[learners]]\nhead = "mlp"\nhidden = [8]\n[[learners]]\nhead = "mlp"\n',
          r"\[\[learners\]\] #2: a second 'mlp' learner \(same head, mode and length control as #1\)"),
    # datasets and human_pairs
    study("dataset_missing", 'datasets = ["nope.csv"]\n', r"datasets\[0\]: .*nope\.csv' is not an existing file"),
    study("dataset_directory", 'datasets = ["adir"]\nhuman_pairs = []\n', r"datasets\[0\]: .*adir' is a directory"),
    study("dataset_unknown_name", 'datasets = ["no-such-set"]\n', r"datasets\[0\]: unknown dataset 'no-such-set'"),
    study("declaration_broken", 'datasets = ["broken.decl.toml"]\n',
          r"datasets\[0\]: .*broken\.decl\.toml: not valid TOML"),
    study("declaration_to_a_directory", 'datasets = ["to-dir.decl.toml"]\nhuman_pairs = []\n',
          r"datasets\[0\]: .*to-dir\.decl\.toml \[dataset\] path: .*adir is not a file"),
    study("dataset_exclude_bad_regex",
          '[[datasets]]\npath = "pool.csv"\nexclude = { column = "prompt", pattern = "(" }\n',
          r"datasets\[0\] exclude: .*\("),
    study("dataset_name_number", '[[datasets]]\npath = "pool.csv"\nname = 5\n',
          r"datasets\[0\]: name must be a string"),
    study("dataset_number", "datasets = [5]\n", r"datasets\[0\]: give a dataset name, a file path or a table"),
    study("datasets_string", 'datasets = "pool.csv"\n', r"key 'datasets' must be list"),
    study("dataset_table_no_path", '[[datasets]]\nname = "x"\n', r"datasets\[0\]: needs path"),
    study("dataset_table_unknown_key", '[[datasets]]\npath = "pool.csv"\ngold = "score"\n', r"unknown key 'gold'"),
    study("dataset_name_path", '[[datasets]]\npath = "pool.csv"\nname = "../evil"\n',
          r'datasets\[0\]: name = "\.\./evil" must be a plain name'),
    study("generated_unknown", '[[datasets]]\ngenerate = "gold-mine"\n', r"generate = 'gold-mine' is not a generator"),
    study("generated_param_unknown", '[[datasets]]\ngenerate = "overopt"\nparams = { prompts = 10 }\n',
          r"params: unknown key 'prompts': use n_prompts, n_candidates"),
    study("generated_param_text", '[[datasets]]\ngenerate = "overopt"\nparams = { dim = "big" }\n',
          r"params: overopt_dataset: dim must be an integer in \[2, 65536\], got \"big\""),
    study("generated_not_a_name", '[[datasets]]\ngenerate = ["overopt"]\n', r"generate = \['overopt'\] is not a generator"),
    study("generated_too_small", '[[datasets]]\ngenerate = "overopt"\nparams = { n_prompts = 1 }\n',
          r"params: overopt_dataset: n_prompts must be an integer in \[2, "),
    study("generated_too_big", '[[datasets]]\ngenerate = "overopt"\nparams = { n_prompts = 100000, n_candidates = 100000 }\n',
          r"would need 1192\.1 GB of embeddings \(at most 4 GB\): use fewer prompts"),
    study("generated_seed_negative", '[[datasets]]\ngenerate = "overopt"\nparams = { seed = -1 }\n',
          r"params: overopt_dataset: seed must be an integer in \[0, 4294967295\], got -1"),
    study("generated_with_path", '[[datasets]]\ngenerate = "overopt"\npath = "pool.csv"\n',
          r"unknown key 'path': a generated dataset takes generate, name, params"),
    study("generated_with_rrm", 'human_pairs = []\n[[datasets]]\ngenerate = "overopt"\nparams = { n_prompts = 4, n_candidates = 5 }\n'
          '[[learners]]\nhead = "linear"\nlength_control = "rrm"\n',
          r"overopt: a generated dataset has vectors but no texts to embed"),
    study("noise_budget_low", '[[noise]]\nbeta = 10.0\nn_pairs = 5\n', r"n_pairs must be an integer in \[20, 1000000\]"),
    study("learner_k_zero", '[[learners]]\nhead = "linear"\nk = 0\n', r"k \(ensemble size\) must be an integer"),
    study("datasets_repeated", 'datasets = ["pool.csv", "pool.csv"]\nhuman_pairs = []\n', r"two datasets share a name"),
    study("no_datasets", "datasets = []\nhuman_pairs = []\n", r"nothing to run"),
    # found when the study's data is read (still before anything is written)
    loaded("human_pairs_is_a_pool", 'datasets = []\nhuman_pairs = ["pool.csv"]\nmethods = []\n',
           r"pool\.csv: listed in human_pairs but has no pairs"),
    loaded("pool_without_gold", 'datasets = ["nogold.csv"]\nhuman_pairs = []\nmethods = []\n',
           r"nogold\.csv: no gold scores: a study.s `datasets` entry"),
    loaded("pairs_file_as_pool", 'datasets = ["pairs.jsonl"]\nhuman_pairs = []\nmethods = []\n',
           r"pairs\.jsonl: a pairs file \(chosen/rejected\), but a study.s `datasets` entry .*needs a pool"),
    # `embrm run` options
    run_option("workers_zero", r"workers \(--workers\) must be an integer in \[1, 1024\], got 0", "--workers", "0"),
    run_option("workers_negative", r"--workers\) must be an integer in \[1, 1024\], got -1", "--workers", "-1"),
    run_option("workers_huge", r"--workers\) must be an integer in \[1, 1024\], got 100000", "--workers", "100000"),
    run_option("runner_unknown", r'runner \(--runner\) must be one of "local", "ray", got "spark"',
               "--out", "{root}/results/b", "--runner", "spark"),
    run_option("out_is_a_file", r"--out .*afile is a file, not a directory", "--out", "{root}/afile"),
    run_option("out_under_a_file", r"--out .*afile is a file, not a directory", "--out", "{root}/afile/sub"),
    run_option("cache_dir_is_a_file", r"--cache-dir .*afile is a file", "--out", "{root}/results/c",
               "--cache-dir", "{root}/afile"),
    # `embrm fit`: the same rules through the Protocol it builds
    fit("fit_seed_negative", r"--seed: .*seed " + INT_RANGE.format(0, 4294967295, -1), "--seed", "-1"),
    fit("fit_seed_huge", r"--seed: .*seed must be an integer in \[0, 4294967295\]", "--seed", "4294967296"),
    fit("fit_flip_one", r"--flip: .*flip must be a number in \[0, 0\.5\), got 1\.0", "--flip", "1.0"),
    fit("fit_length_control_unknown", r"--length-control: length_control = \"short\" is not allowed",
        "--length-control", "short"),
    fit("fit_odin_lgbm", r"--length-control: length_control odin .* needs head = linear or mlp",
        "--head", "lgbm", "--length-control", "odin"),
    fit("fit_flip_negative", r"--flip: .*flip must be a number in \[0, 0\.5\)", "--flip", "-0.25"),
    fit("fit_beta_zero", r"--beta: .*beta must be a finite number > 0, got 0\.0", "--beta", "0"),
    fit("fit_beta_inf", r"--beta: .*beta must be a finite number > 0, got Infinity", "--beta", "inf"),
    fit("fit_beta_nan", r"--beta: .*beta must be a finite number > 0, got NaN", "--beta", "nan"),
    fit("fit_ensemble_huge", r"--ensemble: .*k \(ensemble size\) " + INT_RANGE.format(1, 256, 1000000), "--ensemble", "1000000"),
    fit("fit_ensemble_zero", r"--ensemble: .*k \(ensemble size\) " + INT_RANGE.format(1, 256, 0), "-k", "0"),
    fit("fit_n_pairs_few", r"--n-pairs: .*n_pairs " + INT_RANGE.format(20, 1000000, 5), "--n-pairs", "5"),
    fit("fit_n_pairs_huge", r"--n-pairs: .*n_pairs must be an integer in \[20, 1000000\]", "--n-pairs", "1000000000"),
    fit("fit_test_size_zero", r"--test-size: .*test_size must be a number in \(0, 1\), got 0\.0", "--test-size", "0"),
    fit("fit_test_size_above_one", r"--test-size: .*test_size must be a number in \(0, 1\), got 1\.5", "--test-size", "1.5"),
    fit("fit_hidden_zero", r"--hidden: .*hidden must be a list .*got \[0\]", "--head", "mlp", "--hidden", "0"),
    fit("fit_hidden_negative", r"--hidden: .*hidden must be a list .*got \[64, -1\]", "--head", "mlp", "--hidden", "64,-1"),
    fit("fit_hidden_huge", r"--hidden: .*hidden must be a list .*\(each <= 8192\)", "--head", "mlp", "--hidden", "100000"),
    fit("fit_hidden_text", r"--hidden: expected comma-separated ints", "--head", "mlp", "--hidden", "a"),
    fit("fit_epochs_zero", r"--epochs: .*epochs " + INT_RANGE.format(1, 10000, 0), "--head", "mlp", "--epochs", "0"),
    fit("fit_objective", r'--objective: .*objective must be one of "bt", "classification", got "hinge"', "--head", "mlp",
        "--objective", "hinge"),
    fit("fit_lgbm_objective", r'--objective: .*objective must be one of "classification", "bt", got "rank"', "--head", "lgbm",
        "--objective", "rank"),
    fit("fit_head_unknown", r"--head 'forest': use one of linear, mlp, lgbm", "--head", "forest"),
    fit("fit_mode_unknown", r'mode = "bagging" is not allowed', "--mode", "bagging"),
    fit("fit_mode_mismatch", r"shared_trunk needs head = mlp", "--head", "lgbm", "--mode", "shared_trunk"),
    fit("fit_labels_unknown", r'labels source \(--labels\) = "crowd" is not allowed', "--labels", "crowd"),
    # `embrm bon-sim`: the evaluation values of the same Protocol
    bon("bon_aggregation_unknown", r'aggregation = "best" is not allowed', "--agg", "mean,best"),
    bon("bon_aggregation_twice", r"aggregations .* name one twice", "--agg", "mean,mean"),
    bon("bon_aggregations_empty", r"aggregations must be a non-empty list", "--agg", ","),
    bon("bon_member_outside", r"member " + INT_RANGE.format(0, 1, 5), "--member", "5"),
    bon("bon_member_negative", r"member " + INT_RANGE.format(0, 1, -1), "--member", "-1"),
    bon("bon_lam_inf", r"lam must be a number in \[-1e\+06, 1e\+06\], got Infinity", "--lam", "inf"),
    bon("bon_lcb_beta_nan", r"lcb_beta must be a number in \[-1e\+06, 1e\+06\], got NaN", "--lcb-beta", "nan"),
    bon("bon_lam_huge", r"--lam: lam must be a number in \[-1e\+06, 1e\+06\], got 1e\+308", "--lam", "1e308"),
    bon("bon_lcb_beta_huge", r"--lcb-beta: lcb_beta must be a number in .*got 1e\+308", "--lcb-beta", "1e308"),
    bon("bon_temperature_tiny", r"--temperature: temperature must be a number in .*got 1e-320", "--temperature",
        "1e-320"),
    bon("bon_temperature_huge", r"--temperature: .*got 1e\+308", "--temperature", "1e308"),
    bon("bon_temperature_zero", r"temperature must be a number in \[1e-06, 1e\+06\], got 0\.0", "--temperature", "0"),
    bon("bon_n_max_zero", r"n_max \(largest n of Best-of-n\) must be an integer in \[1, 1000000\]", "--n-max", "0"),
]


@pytest.fixture(scope="session")
def root(tmp_path_factory) -> Path:
    """Every study file of the table, a tiny pool (8 prompts x 5 answers with gold) and the same without gold, a
    directory and a plain file to point paths at, an empty cache, and a saved K = 2 linear model of the pool (on
    random vectors: bon-sim refuses the bad values before it needs any)."""
    from embrm.data._registry import load_dataset
    from embrm.pipeline._protocol import LabelConfig, Protocol
    from embrm.pipeline._steps import fit as fit_model

    root = tmp_path_factory.mktemp("bad-study")
    for id, text in STUDIES.items():
        path = root / f"{id}.toml"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    for name, text in DECLARATIONS.items():
        (root / name).write_text(text)
    rng = np.random.default_rng(0)
    pool = pl.DataFrame({"prompt_id": [f"p{i // 5}" for i in range(40)], "prompt": [f"q{i // 5}" for i in range(40)],
                         "response": [f"answer {i}" for i in range(40)], "gold": rng.random(40)})
    pool.write_csv(root / "pool.csv")
    pool.drop("gold").write_csv(root / "nogold.csv")
    (root / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
                                      '{"prompt": "q", "chosen": "c", "rejected": "d"}\n')
    (root / "adir").mkdir()
    (root / "afile").write_text("not a directory\n")
    (root / "cache").mkdir()
    ds = load_dataset(root / "pool.csv")
    X = rng.standard_normal((len(ds.responses), 8)).astype(np.float32)
    protocol = Protocol(labels=LabelConfig(n_pairs=40), k=2, test_size=0.5)
    fit_model(ds, X, protocol, progress=False).save(root / "model", ds, embed_spec={"backend": "none (random)"})
    return root


def test_the_table_is_big_and_distinct():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    assert len({c.args for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_cleanly(case, root):
    assert_clean_failure(case, root)
