"""RRM augmentation: off-prompt answers under each prompt (drawn only from eligible rows of other prompts), and the
pairs they add (on-prompt beats off-prompt, off-prompt answers tie), never using held-out text."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from embrm.core._errors import EmbrmError
from embrm.data._augment import AUG_COLUMNS, rrm_dataset, rrm_pairs
from embrm.data._dataset import RESPONSE_HEAD, Dataset, pool_from_frame


def tiny_pool(n_prompts=6, per=4):
    """A pool: prompt q0..q{n-1}, `per` answers each; the last answer of every prompt is unscored and the third is
    an excluded probe (model 'probe')."""
    rows = [{"prompt_id": f"q{p}", "prompt": f"question {p}?", "response": f"answer {r} to {p}",
             "gold": None if r == per - 1 else float(r), "model": "probe" if r == 2 else f"m{r}"}
            for p in range(n_prompts) for r in range(per)]
    ds = pool_from_frame(pl.DataFrame(rows), Path("tiny.parquet"), response_key="model", name="tiny")
    ds.responses = ds.responses.with_columns(excluded=pl.col("model") == "probe")
    ds.exclusion = "probes"
    return ds


def tiny_pairs_dataset(n=8):
    """A pairwise dataset: n pairs, one prompt each; the rejected side of pair 0 is excluded."""
    r = pl.DataFrame({"prompt_id": [f"h{i // 2}" for i in range(2 * n)],
                      "response_id": [f"{i // 2}:{'chosen' if i % 2 == 0 else 'rejected'}" for i in range(2 * n)],
                      "prompt": [f"dialogue {i // 2}" for i in range(2 * n)],
                      "response": [f"reply {i}" for i in range(2 * n)],
                      "gold": pl.Series([None] * (2 * n), dtype=pl.Float64), "scored": [False] * (2 * n),
                      "excluded": [i == 1 for i in range(2 * n)]})
    pairs = pl.DataFrame({"prompt_id": [f"h{i}" for i in range(n)], "chosen_id": [f"{i}:chosen" for i in range(n)],
                          "rejected_id": [f"{i}:rejected" for i in range(n)]})
    return Dataset("hh", r, pairs, "hh.jsonl", "bad")


def sources(ds, aug):
    """The source rows of aug rows, as a joined table."""
    return aug.responses.join(ds.responses.select("response_id", src_prompt="prompt_id", src_response="response",
                                                  src_scored="scored", src_excluded="excluded"),
                              left_on="source_id", right_on="response_id", how="left")


@pytest.mark.parametrize("per_prompt", [1, 2, 3])
def test_every_aug_row_is_an_eligible_answer_of_another_prompt(per_prompt):
    ds = tiny_pool()
    aug = rrm_dataset(ds, per_prompt=per_prompt, seed=1)
    r = aug.responses
    assert tuple(r.columns) == AUG_COLUMNS and tuple(r.columns[: len(RESPONSE_HEAD)]) == RESPONSE_HEAD
    assert aug.name == "tiny+rrm" and aug.source == ds.source and aug.pairs is None and aug.exclusion == ""
    assert len(r) == ds.n_prompts * per_prompt
    assert (r.group_by("prompt_id").len()["len"] == per_prompt).all()
    j = sources(ds, aug)
    assert j["src_prompt"].null_count() == 0  # every source is a real row
    assert (j["src_prompt"] != j["prompt_id"]).all() and (j["source_prompt_id"] == j["src_prompt"]).all()
    assert j["src_scored"].all() and not j["src_excluded"].any()  # never an unscored or excluded source
    assert (j["src_response"] == j["response"]).all()
    # the prompt text is the prompt's own; no gold; nothing excluded; ids as promised; distinct sources per prompt
    own = ds.responses.select("prompt_id", "prompt").unique()
    assert r.select("prompt_id", "prompt").join(own, on=["prompt_id", "prompt"], how="anti").is_empty()
    assert r["gold"].null_count() == len(r) and not r["scored"].any() and not r["excluded"].any()
    assert r["response_id"].to_list() == [f"q{p}:rrm{k}" for p in range(6) for k in range(per_prompt)]
    assert r.select("prompt_id", "source_id").is_unique().all()


def test_augmentation_is_deterministic_and_the_seed_matters():
    ds = tiny_pool(n_prompts=30)
    a, b = rrm_dataset(ds, seed=0), rrm_dataset(ds, seed=0)
    assert a.responses.equals(b.responses)
    assert not a.responses.equals(rrm_dataset(ds, seed=1).responses)


def test_draws_are_spread_over_the_eligible_answers():
    ds = tiny_pool(n_prompts=40)
    r = rrm_dataset(ds, per_prompt=3, seed=0).responses
    counts = r["source_id"].value_counts()["count"]
    eligible = int(ds.usable.sum())
    assert len(counts) > 0.6 * eligible  # 120 draws over 80 eligible answers reach most of them
    assert int(counts.max()) <= 8


def test_pairs_datasets_draw_any_non_excluded_answer():
    ds = tiny_pairs_dataset()
    aug = rrm_dataset(ds, per_prompt=2, seed=0)
    j = sources(ds, aug)
    assert not j["src_excluded"].any() and (j["src_prompt"] != j["prompt_id"]).all()
    assert not j["src_scored"].any()  # unscored is fine for pairs: nothing there has gold


def test_refusals():
    ds = tiny_pool(n_prompts=1)
    with pytest.raises(EmbrmError, match="at least 2"):
        rrm_dataset(ds)
    small = tiny_pool(n_prompts=2)  # each prompt sees 2 eligible answers of the other one
    with pytest.raises(EmbrmError, match="per_prompt"):
        rrm_dataset(small, per_prompt=3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(EmbrmError):
            rrm_dataset(small, per_prompt=bad)


# ----------------------------------------------------------------------------- pairs

def labelled(ds):
    """Two labelled pairs per prompt over its scored rows (rows 1 > 0 and 1 > 0 again on the same prompt)."""
    pid = ds.responses["prompt_id"].to_numpy()
    rows = np.arange(len(pid))
    first = rows[np.r_[True, pid[1:] != pid[:-1]]]
    pairs = np.concatenate([np.stack([first + 1, first], 1), np.stack([first, first + 1], 1)])
    return pairs, np.concatenate([pid[first], pid[first]])


def test_rrm_pairs_shapes_indices_and_roles():
    ds = tiny_pool(n_prompts=10)
    n = len(ds.responses)
    aug = rrm_dataset(ds, per_prompt=2, seed=0).responses
    pairs, pp = labelled(ds)
    train = np.array([f"q{i}" for i in range(10)])
    new, new_pid = rrm_pairs(pairs, pp, aug, train, n)
    assert new.dtype == np.int64 and new.shape == (4 * len(pairs), 2) and len(new_pid) == len(new)
    assert new.min() >= 0 and new.max() < n + len(aug)
    aug_pid = aug["prompt_id"].to_numpy()
    row_pid = ds.responses["prompt_id"].to_numpy()
    on_off = (new[:, 0] < n)
    c, r = new[on_off, 0], new[on_off, 1]
    assert (r >= n).all()  # the rejected side of an on/off pair is an aug row
    assert (row_pid[c] == new_pid[on_off]).all() and (aug_pid[r - n] == new_pid[on_off]).all()
    # the chosen of every on/off pair is the labelled pair's chosen or rejected row
    groups = new.reshape(len(pairs), 4, 2)
    assert np.array_equal(groups[:, 0, 0], pairs[:, 0]) and np.array_equal(groups[:, 1, 0], pairs[:, 1])
    # ties: both aug rows, same prompt, in both orders
    ties = groups[:, 2:]
    assert (ties >= n).all() and np.array_equal(ties[:, 0], ties[:, 1, ::-1])
    assert (ties[:, 0, 0] != ties[:, 0, 1]).all()
    assert (aug_pid[ties.reshape(-1) - n] == np.repeat(pp, 4)).all()
    # a and b are the prompt's first and second aug rows
    assert np.array_equal(groups[:, 0, 1] - n, 2 * np.searchsorted(np.unique(aug_pid), pp))


def test_one_labelled_pair_gives_four_new_pairs():
    ds = tiny_pool()
    n = len(ds.responses)
    aug = rrm_dataset(ds, seed=0).responses
    new, pid = rrm_pairs(np.array([[1, 0]]), np.array(["q0"]), aug, np.array([f"q{i}" for i in range(6)]), n)
    a, b = n + 0, n + 1
    assert new.tolist() == [[1, a], [0, b], [b, a], [a, b]] and pid.tolist() == ["q0"] * 4


def test_sources_outside_the_training_prompts_are_never_used():
    ds = tiny_pool(n_prompts=12)
    n = len(ds.responses)
    aug = rrm_dataset(ds, per_prompt=3, seed=2).responses
    pairs, pp = labelled(ds)
    train = np.array([f"q{i}" for i in range(8)])
    keep = np.isin(pp, train)
    new, new_pid = rrm_pairs(pairs[keep], pp[keep], aug, train, n)
    used = np.unique(new[new >= n]) - n
    assert np.isin(aug["source_prompt_id"].to_numpy()[used], train).all()
    # each labelled pair adds 4 pairs when its prompt has two valid aug rows, 2 (no tie) with one, 0 with none
    valid = aug.filter(pl.col("source_prompt_id").is_in(list(train))).group_by("prompt_id").len()
    nvalid = dict(zip(valid["prompt_id"], valid["len"]))
    expect = sum({0: 0, 1: 2}.get(min(nvalid.get(p, 0), 2), 4) for p in pp[keep])
    assert len(new) == expect and set(new_pid) <= set(train)


def test_one_valid_aug_row_gives_the_on_off_pairs_without_a_tie():
    ds = tiny_pool(n_prompts=3)
    n = len(ds.responses)
    aug = rrm_dataset(ds, per_prompt=2, seed=0).responses
    aug = aug.with_columns(source_prompt_id=pl.when(pl.col("response_id") == "q0:rrm0").then(pl.lit("held-out"))
                           .otherwise(pl.col("source_prompt_id")))
    new, _ = rrm_pairs(np.array([[1, 0]]), np.array(["q0"]), aug, ["q0", "q1", "q2"], n)
    assert new.tolist() == [[1, n + 1], [0, n + 1]]
    none, pid = rrm_pairs(np.array([[1, 0]]), np.array(["q0"]), aug, ["nothing"], n)
    assert none.shape == (0, 2) and len(pid) == 0


def test_rrm_pairs_is_vectorised_and_empty_input_is_fine():
    ds = tiny_pool()
    aug = rrm_dataset(ds).responses
    new, pid = rrm_pairs(np.zeros((0, 2), np.int64), np.array([], dtype=str), aug, ["q0"], len(ds.responses))
    assert new.shape == (0, 2) and new.dtype == np.int64 and len(pid) == 0


def test_rrm_pairs_refuses_bad_input():
    ds = tiny_pool()
    n = len(ds.responses)
    aug = rrm_dataset(ds).responses
    train = ["q0", "q1"]
    cases = [
        lambda: rrm_pairs(np.array([[1, n]]), np.array(["q0"]), aug, train, n),
        lambda: rrm_pairs(np.array([[1, 0]]), np.array(["q0", "q1"]), aug, train, n),
        lambda: rrm_pairs(np.array([1, 0]), np.array(["q0"]), aug, train, n),
        lambda: rrm_pairs(np.array([[1, 0]]), np.array(["q0"]), aug.drop("source_prompt_id"), train, n),
        lambda: rrm_pairs(np.array([[1, 0]]), np.array(["q0"]), aug, train, 0),
    ]
    for case in cases:
        with pytest.raises(EmbrmError) as e:
            case()
        assert "\n" not in str(e.value)
