"""Datasets carry their own facts: the registry's exclusion rules and attachments, declaration files, options."""

import polars as pl
import pytest
from realdata import DATA_DIR, needs_data

from embrm.core._errors import EmbrmError
from embrm.data._registry import ALPACA_PROBES, Exclusion, dataset_spec, load_dataset, read_declaration


@pytest.mark.slow
@needs_data
def test_the_registry_declares_the_probes_and_the_published_picks(monkeypatch):
    monkeypatch.delenv("EMBRM_DATA_DIR", raising=False)  # the data dir given as an argument must be enough
    ds = load_dataset("alpaca-eval-models", DATA_DIR)
    probes = ds.responses.filter("excluded")["model"].unique().sort().to_list()
    assert ds.exclusion == "probes" and set(probes) == {"NullModel", "gpt4_gamed", "alpaca-7b_verbose",
                                                        "gpt-3.5-turbo-1106_verbose"}
    assert not ds.usable[ds.excluded].any() and ds.usable.sum() == ds.responses["scored"].sum() - len(probes) * 400
    assert len(ds.without_excluded().responses) == len(ds.responses) - 1600
    bon16 = load_dataset("alpaca-eval-bon16", DATA_DIR)
    assert bon16.attachments["published_picks"].is_relative_to(DATA_DIR) and not bon16.excluded.any()


def test_a_declaration_maps_columns_and_excludes_once(tmp_path):
    pl.DataFrame({"q": ["a", "a", "b", "b"], "ans": ["x", "y", "z", "w"], "s": [1.0, 2.0, 0.5, 0.1],
                  "who": ["m1", "hack", "m1", "hack"]}).write_csv(tmp_path / "pool.csv")
    (tmp_path / "d.toml").write_text('[dataset]\npath = "pool.csv"\nname = "mine"\n'
                                     '[dataset.columns]\nprompt = "q"\nresponse = "ans"\ngold = "s"\n'
                                     'response_key = "who"\n[dataset.exclude]\ncolumn = "who"\nvalues = ["hack"]\n')
    ds = load_dataset(tmp_path / "d.toml")
    assert ds.name == "mine" and ds.exclusion == "excluded"
    assert ds.responses.filter("excluded")["response_id"].str.ends_with(":hack").all() and ds.excluded.sum() == 2
    # options on top of a declaration win; a file with options equals the declaration
    same = load_dataset(tmp_path / "pool.csv", prompt_col="q", response_col="ans", gold_col="s", response_key="who",
                        exclude="who=^hack$")
    assert same.responses.drop("excluded").equals(ds.responses.drop("excluded")) and same.excluded.sum() == 2


@pytest.mark.parametrize("text, message", [
    ('[dataset]\ncolumns = {prompt = "q"}\n', "needs path"),
    ('[dataset]\npath = "p.csv"\ncolumns = {question = "q"}\n', "map roles"),
    ('[dataset]\npath = "p.csv"\nexclude = {column = "m"}\n', "one of pattern"),
    ('[dataset]\npath = "p.csv"\nexclude = {column = "m", pattern = "("}\n', "not a regular expression"),
    ('[data]\npath = "p.csv"\n', "one [dataset] table"),
    ('[dataset\n', "not valid TOML"),
])
def test_bad_declarations_are_one_line_errors(tmp_path, text, message):
    (tmp_path / "d.toml").write_text(text)
    with pytest.raises(EmbrmError, match=None) as e:
        read_declaration(tmp_path / "d.toml")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_exclusion_options_and_errors(tmp_path):
    assert Exclusion.parse("model=^a$|b") == Exclusion("model", "^a$|b")
    with pytest.raises(EmbrmError, match="COLUMN=REGEX"):
        Exclusion.parse("model")
    with pytest.raises(EmbrmError, match="knows its columns"):
        dataset_spec("alpaca-eval-models", prompt_col="x")
    with pytest.raises(EmbrmError, match="unknown dataset"):
        dataset_spec("no-such-set")
    frame = pl.DataFrame({"model": ["NullModel", "x_verbose", "gpt4", None]})
    assert ALPACA_PROBES.mask(frame, "f").to_list() == [True, True, False, False]


def test_a_named_data_dir_that_does_not_exist_is_never_created(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBRM_DATA_MIRROR", "http://127.0.0.1:9")
    with pytest.raises(EmbrmError, match="data dir .*nowhere does not exist"):
        load_dataset("hh-rlhf-harmless-test", tmp_path / "nowhere")
    monkeypatch.setenv("EMBRM_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(EmbrmError, match="elsewhere does not exist .*EMBRM_DATA_DIR"):
        load_dataset("hh-rlhf-harmless-test")
    assert list(tmp_path.iterdir()) == []


def test_rules_the_matcher_cannot_run_and_roles_on_one_column_are_refused(tmp_path):
    with pytest.raises(EmbrmError, match="look-around"):
        Exclusion.parse("model=(?=a)b")
    pl.DataFrame({"q": ["a", "b"], "ans": ["x", "y"]}).write_csv(tmp_path / "pool.csv")
    with pytest.raises(EmbrmError, match="column 'q' is given as both prompt and response"):
        load_dataset(tmp_path / "pool.csv", prompt_col="q", response_col="q")
    (tmp_path / "d.toml").write_text('[dataset]\npath = "nope.csv"\n')
    with pytest.raises(EmbrmError, match=r"d.toml \[dataset\] path: .*nope.csv is not a file"):
        read_declaration(tmp_path / "d.toml")


@pytest.mark.slow
@needs_data
def test_the_two_halves_of_a_dataset_are_disjoint_fixed_and_cover_it():
    from embrm.data._registry import DatasetSpec, half_of

    ds = load_dataset("alpaca-eval-models", DATA_DIR)
    first, second = (load_dataset(DatasetSpec("alpaca-eval-models", half=h), DATA_DIR) for h in (1, 2))
    a, b = set(first.responses["prompt_id"]), set(second.responses["prompt_id"])
    assert not a & b and a | b == set(ds.responses["prompt_id"]) and len(a) == len(b) == 200
    assert set(half_of(ds, 1).responses["prompt_id"]) == a  # the same split on every call and machine
    assert first.spec.label == "alpaca-eval-models.half1" and first.excluded.sum() > 0  # facts kept
    hh = load_dataset(DatasetSpec("hh-rlhf-harmless-test", half=2), DATA_DIR)
    assert len(hh.pairs) > 0 and set(hh.pairs["prompt_id"]) <= set(hh.responses["prompt_id"])
