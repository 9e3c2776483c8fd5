"""The reward a served model gives: the members `embrm score` writes, standardised, aggregated and normalised on
the training responses exactly as the studies do; settings per call; requests parsed from OpenRLHF's shape."""

import numpy as np
import polars as pl
import pytest
from realdata import needs_data

from embrm.core import EmbrmError
from embrm.data import load_dataset
from embrm.evaluation import AGGREGATIONS, aggregate_all, rows_of, standardize
from embrm.pipeline import load_model, model_embeddings, score
from embrm.serve import BadRequest, RewardSettings, split_query, unwrap_prompt

pytestmark = [needs_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def scored(fitted):
    """(dataset, `embrm score`'s frame, training-response mask) of the fitted pool."""
    model = load_model(fitted / "model")
    ds = load_dataset(fitted / "pool.parquet", response_key="model")
    frame = score(model, ds, model_embeddings(model, ds, fitted / "cache"))
    return ds, frame, rows_of(ds.responses, model.split.train) & ~ds.excluded


def test_rewards_equal_embrm_score_standardised_like_the_studies(reward_model, scored):
    ds, frame, train = scored
    members = frame.select(pl.col("^member_.*$")).to_numpy()
    served = reward_model.rewards(ds.responses["prompt"].to_list(), ds.responses["response"].to_list(),
                                  aggregations=AGGREGATIONS)
    np.testing.assert_allclose(served.members, members, rtol=0, atol=1e-6)  # cached texts: the same vectors
    z = standardize(members.astype(np.float64), train)
    for name in AGGREGATIONS:
        a = aggregate_all(z, (name,), lam=1.0, beta=1.0)[name]
        expected = (a - a[train].mean()) / a[train].std()
        got = served.rewards if name == "lcb" else served.aggregations[name]
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
    assert served.n_embedded == 0 and reward_model.vectors.counts["disk"] > 0  # read from the cache, not embedded
    # scores: the mid-rank among the training responses, so uniform-ish there and ordered like the rewards
    assert abs(served.scores[train].mean() - 0.5) < 1e-9
    order = np.argsort(served.rewards)
    assert np.all(np.diff(served.scores[order]) >= 0) and served.scores.min() > 0 and served.scores.max() < 1


def test_new_texts_are_embedded_like_embrm_embed(reward_model, tmp_path):
    from embrm.embedding import EmbedderConfig

    prompts = ["Write a haiku about rain.", "What is the capital of France?", "What is the capital of France?"]
    responses = ["Soft rain on the roof / the garden drinks slowly / dusk smells of wet stone",
                 "Paris.", "The capital of France is Paris, on the Seine."]
    served = reward_model.rewards(prompts, responses)
    assert served.n_embedded == 3
    frame = pl.DataFrame({"prompt_id": ["a", "b", "b"], "prompt": prompts, "response": responses})
    X = EmbedderConfig(dtype="float32").embed(frame, tmp_path, progress=False).X
    expected = reward_model.model.ensemble.predict(X)
    np.testing.assert_allclose(served.members, expected, atol=1e-5)
    again = reward_model.rewards(prompts, responses)  # now from memory
    assert again.n_embedded == 0
    np.testing.assert_array_equal(again.rewards, served.rewards)


def test_settings_per_call_and_their_errors(reward_model):
    p, r = ["Name a fruit."] * 2, ["Apple.", "A banana is a long yellow fruit that grows in bunches on large plants."]
    base = reward_model.rewards(p, r)
    assert base.settings == RewardSettings()
    mean = reward_model.rewards(p, r, {"aggregation": "mean"})
    np.testing.assert_allclose(mean.rewards, reward_model.reference.normalised(mean.mean, mean.settings))
    raw = reward_model.rewards(p, r, {"aggregation": "mean", "normalize": False})
    np.testing.assert_allclose(raw.rewards, raw.mean)
    penalised = reward_model.rewards(p, r, {"length_penalty": 1.0})
    assert penalised.rewards[1] - base.rewards[1] < penalised.rewards[0] - base.rewards[0]  # the long one pays more
    for bad, says in [({"aggregation": "max"}, "aggregation"), ({"lam": -1}, "lam"), ({"lam": "x"}, "lam"),
                      ({"temperature": 0}, "temperature"), ({"normalize": "yes"}, "normalize"),
                      ({"beta": 1}, "unknown setting 'beta'"), ({"member": 9}, "member")]:
        with pytest.raises(EmbrmError, match=says):
            reward_model.rewards(p, r, bad)
    with pytest.raises(EmbrmError, match="2 prompts for 1 responses"):
        reward_model.rewards(p, r[:1])


@pytest.mark.parametrize("prompt, query, expected", [
    ("Hi?", "Hi? Hello there.</s>", ("Hi?", " Hello there.")),  # the text as sent, less the stop string
    ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
     None, ("Name a colour.", "Blue.")),
    ("<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\n", None, ("Name a colour.", "Blue.")),
    ("<start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n", None, ("Name a colour.", "Blue.")),
    ("[INST] Name a colour. [/INST]", None, ("Name a colour.", "Blue.")),
])
def test_openrlhf_queries_split_into_the_pairs_the_model_knows(prompt, query, expected):
    query = query or prompt + "Blue.<|im_end|><|endoftext|>"
    assert split_query(query, prompt, 0) == expected
    if prompt.startswith(("<", "[")):
        assert split_query(query, None, 0) == expected  # no prompts sent: split at the assistant turn
    assert unwrap_prompt("plain text") == "plain text"
    with pytest.raises(BadRequest, match=r"query\[3\] does not contain prompts\[3\]"):
        split_query("something else", "Hi?", 3)


def test_stop_strings_are_dropped_unless_asked_to_keep_them():
    assert split_query("Hi? Hello.</s>", "Hi?", 0) == ("Hi?", " Hello.")
    assert split_query("Hi? Hello.</s>", "Hi?", 0, strip_stop=False) == ("Hi?", " Hello.</s>")
