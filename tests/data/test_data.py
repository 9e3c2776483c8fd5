import gzip
import json

import polars as pl
import pytest
from realdata import DATA_DIR, needs_data

from embrm.core._errors import EmbrmError
from embrm.data._dataset import load_file, load_pairs, load_pool
from embrm.data._registry import REGISTRY, fetch, load_dataset


@pytest.mark.slow
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


@pytest.mark.slow
@needs_data
def test_bon16_pool_keeps_unscored_samples_marked():
    ds = load_dataset("alpaca-eval-bon16", DATA_DIR)
    r = ds.responses
    assert ds.kind == "pool" and len(r) == 12880 and ds.n_prompts == 805
    assert int(r["scored"].sum()) == 8855
    assert r.filter(~pl.col("scored"))["sample_idx"].min() == 11
    assert r["response_id"][0] == "0:0" and {"model", "sample_idx"} & set(r.columns) == {"sample_idx"}


@pytest.mark.slow
@needs_data
def test_models_pool_has_model_column_and_keeps_empty_answers():
    ds = load_dataset("alpaca-eval-models", DATA_DIR)
    r = ds.responses
    assert len(r) == 23198 and ds.n_prompts == 400 and "model" in r.columns
    assert r["scored"].all()
    assert (r["response"] == "").sum() == 15  # real empty answers, scored by the judge


@pytest.mark.slow
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


def test_bom_crlf_and_iso_dates_load_as_the_text_they_are(tmp_path):
    rows = ['{"prompt": "2020-01-01", "chosen": "a", "rejected": "b"}',
            '{"prompt": "q", "chosen": "c", "rejected": "d"}']
    (tmp_path / "p.jsonl").write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode())
    ds = load_file(tmp_path / "p.jsonl")
    assert ds.responses["prompt"].to_list()[:2] == ["2020-01-01", "2020-01-01"] and len(ds.pairs) == 2
    (tmp_path / "pool.csv").write_bytes("\ufeffprompt,response,gold\r\np,a,1\r\np,b,\r\n".encode())
    pool = load_file(tmp_path / "pool.csv")
    assert pool.responses["gold"].to_list() == [1.0, None] and pool.responses["scored"].to_list() == [True, False]


@pytest.mark.parametrize("name, content, match", [
    ("obj.jsonl", ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": {"x": 1}, "chosen": "b", '
                   '"rejected": "c"}\n'), r"line 2: 'prompt' is an object, not text as on line 1"),
    ("num.json", '[{"prompt": "a", "response": "b"}, {"prompt": "a", "response": 7}]',
     r"row 2: 'response' is a number, not text as on row 1"),
    ("blank.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": "a"}\n', r"line 2 is blank"),
    ("empty.jsonl", "", r"the file is empty"),
    ("latin.jsonl", b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', r"line 2 is not UTF-8"),
    ("inf.csv", "prompt,response,gold\np,a,1\np,b,inf\n", r"row 2: gold 'gold' is inf: write a finite number"),
    ("nan.jsonl", '{"prompt": "p", "response": "a", "gold": NaN}\n', r"line 1: gold 'gold' is nan"),
    ("twice.csv", "prompt,chosen,rejected,chosen\np,a,b,c\n", r"column 'chosen' appears twice in the header"),
    ("ragged.csv", "prompt,response\np,a\np,b,c\n", r"line 3 has another number of fields"),
    ("top.json", "3", r"the top level is a number"),
    ("notgz.jsonl.gz", "plain", r"not gzip-compressed"),
])
def test_malformed_files_name_the_file_and_line(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(EmbrmError, match=match) as e:
        load_file(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_options_and_datasets_that_do_not_fit_are_refused(tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    with pytest.raises(EmbrmError, match="--gold-col is for pools"):
        load_file(tmp_path / "pairs.jsonl", gold_col="score")
    with pytest.raises(EmbrmError, match="column 'chosen' is given as both chosen and rejected"):
        load_file(tmp_path / "pairs.jsonl", rejected_col="chosen")
    with pytest.raises(EmbrmError, match=r"pairs.jsonl: a pairs file \(chosen/rejected\), but bon needs a pool"):
        load_file(tmp_path / "pairs.jsonl").require_pool("bon")
    pl.DataFrame({"prompt": ["p", "p"], "response": ["a", "b"], "gold": [1.0, 2.0]}).write_csv(tmp_path / "one.csv")
    with pytest.raises(EmbrmError, match=r"one.csv: only 1 prompt\(s\) with scored responses: bon needs at least 2"):
        load_file(tmp_path / "one.csv").require_pool("bon")


def test_an_unreadable_file_is_named_with_the_reason(tmp_path, monkeypatch):
    """chmod 000 does not stop root, so the refusal is simulated where the bytes are read."""
    from pathlib import Path

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(EmbrmError, match=r"p.jsonl: cannot read the file \(Permission denied\): check its permiss"):
        load_file(path)
