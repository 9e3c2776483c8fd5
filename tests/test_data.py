import gzip
import json

import polars as pl
import pytest

from embrm.data import load_file, load_pairs, load_pool
from embrm.datasets import REGISTRY, fetch, load_dataset
from embrm.errors import EmbrmError
from realdata import DATA_DIR, needs_data


@needs_data
def test_hh_rlhf_loads_as_pairs_split_at_last_assistant_turn():
    ds = load_dataset("hh-rlhf-harmless-test", DATA_DIR)
    assert ds.kind == "pairs" and len(ds.pairs) == 2312 and len(ds.responses) == 4624
    r = ds.responses
    assert r["prompt"].str.ends_with("\n\nAssistant:").all()
    assert not r["response"].str.contains("\n\nAssistant:").any()
    # prompt + response re-assembles the original dialogue exactly
    with gzip.open(DATA_DIR / "hh_rlhf_harmless_base_test.jsonl.gz", "rt") as f:
        first = json.loads(f.readline())
    chosen = r.filter(pl.col("response_id") == "0:chosen")
    assert chosen["prompt"][0] + chosen["response"][0] == first["chosen"]
    # both sides of a pair share one prompt id, so prompt splits never separate them
    joined = ds.pairs.join(r.select("response_id", "prompt_id"), left_on="rejected_id", right_on="response_id")
    assert (joined["prompt_id"] == joined["prompt_id_right"]).all()
    assert r["response_id"].is_unique().all()


@needs_data
def test_bon16_pool_keeps_unscored_samples_marked():
    ds = load_dataset("alpaca-eval-bon16", DATA_DIR)
    r = ds.responses
    assert ds.kind == "pool" and len(r) == 12880 and ds.n_prompts == 805
    assert int(r["scored"].sum()) == 8855
    assert r.filter(~pl.col("scored"))["sample_idx"].min() == 11
    assert r["response_id"][0] == "0:0" and {"model", "sample_idx"} & set(r.columns) == {"sample_idx"}


@needs_data
def test_models_pool_has_model_column_and_keeps_empty_answers():
    ds = load_dataset("alpaca-eval-models", DATA_DIR)
    r = ds.responses
    assert len(r) == 23198 and ds.n_prompts == 400 and "model" in r.columns
    assert r["scored"].all()
    assert (r["response"] == "").sum() == 15  # real empty answers, scored by the judge


@needs_data
def test_registry_checksums_match_shared_data():
    for info in REGISTRY.values():
        assert fetch(info, DATA_DIR).exists()


def test_missing_named_dataset_offline_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBRM_DATA_MIRROR", "http://127.0.0.1:9")  # refused at once: offline
    with pytest.raises(EmbrmError, match=r"put alpaca_eval_bon16/responses.parquet under"):
        load_dataset("alpaca-eval-bon16", tmp_path)


def test_altered_file_fails_checksum(tmp_path):
    info = REGISTRY["alpaca-eval-models"]
    (tmp_path / info.path).parent.mkdir(parents=True)
    (tmp_path / info.path).write_bytes(b"not the data")
    with pytest.raises(EmbrmError, match="checksum"):
        fetch(info, tmp_path)


def test_trl_pairs_in_every_format(tmp_path):
    rows = [{"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."},
            {"prompt": "Add 2+2", "chosen": "4", "rejected": "5"}]
    df = pl.DataFrame(rows)
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "p.json").write_text(json.dumps(rows))
    df.write_parquet(tmp_path / "p.parquet")
    df.write_csv(tmp_path / "p.csv")
    for ext in ("jsonl", "json", "parquet", "csv"):
        ds = load_file(tmp_path / f"p.{ext}")
        assert ds.kind == "pairs" and len(ds.pairs) == 2
        assert ds.responses.filter(pl.col("response_id") == "1:chosen")["response"][0] == "4"


def test_column_names_are_overridable(tmp_path):
    pl.DataFrame({"q": ["a?"], "good": ["yes"], "bad": ["no"]}).write_parquet(tmp_path / "x.parquet")
    ds = load_pairs(tmp_path / "x.parquet", prompt_col="q", chosen_col="good", rejected_col="bad")
    assert ds.responses["response"].to_list() == ["yes", "no"]


def test_pool_without_ids_or_gold(tmp_path):
    pl.DataFrame({"prompt": ["p1", "p1", "p2"], "response": ["a", "b", "c"]}).write_csv(tmp_path / "pool.csv")
    ds = load_pool(tmp_path / "pool.csv")
    assert ds.n_prompts == 2 and not ds.has_gold and ds.responses["response_id"].is_unique().all()


@pytest.mark.parametrize("content,match", [
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n', r"line 2"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": null, "rejected": "c"}\n',
     r"line 2: null 'chosen'"),
    ('{"prompt": "", "chosen": "b", "rejected": "c"}\n', r"line 1: empty or null 'prompt'"),
    ('{"chosen": "no turns here", "rejected": "c"}\n', r"line 1: the 'chosen' dialogue has no"),
])
def test_bad_pair_files_name_the_line(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(EmbrmError, match=match) as e:
        load_file(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_bad_files_and_columns(tmp_path):
    with pytest.raises(EmbrmError, match="file not found"):
        load_file(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(EmbrmError, match="unknown format"):
        load_file(tmp_path / "x.txt")
    pl.DataFrame({"question": ["q"], "answer": ["a"]}).write_parquet(tmp_path / "pool.parquet")
    with pytest.raises(EmbrmError, match=r"no column 'prompt' \(columns: question, answer\): pass --prompt-col"):
        load_file(tmp_path / "pool.parquet")
    pl.DataFrame({"prompt_id": [1, 1], "prompt": ["q", "q"], "response": ["a", "b"], "k": [0, 0]}
                 ).write_parquet(tmp_path / "dup.parquet")
    with pytest.raises(EmbrmError, match="row 2: duplicate response id '1:0'"):
        load_pool(tmp_path / "dup.parquet", response_key="k")
    pl.DataFrame({"prompt": ["q"], "response": ["a"], "gold": ["high"]}).write_parquet(tmp_path / "g.parquet")
    with pytest.raises(EmbrmError, match="not numbers"):
        load_pool(tmp_path / "g.parquet")
    (tmp_path / "trunc.parquet").write_bytes((tmp_path / "pool.parquet").read_bytes()[:40])
    with pytest.raises(EmbrmError, match="cannot read"):
        load_file(tmp_path / "trunc.parquet")
