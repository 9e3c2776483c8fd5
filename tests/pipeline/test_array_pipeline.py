"""run_experiment on an array dataset (Sun et al.'s layout, read from disk): the data's own train/test split, labels
from train prompts only, evaluation on test prompts only, the same numbers as on the vectors in memory, a fit that
reads only its pairs' rows, streaming that does not change the scores, and no length rulers without texts."""

import dataclasses

import numpy as np
import polars as pl
import pytest

import embrm.core._rows as rows_module
from embrm.core import EmbrmError, Rows
from embrm.data import pair_indices
from embrm.data._registry import load_dataset
from embrm.data._sun_layout import write_sun_layout
from embrm.pipeline._protocol import LabelConfig, Learner, Protocol
from embrm.pipeline._steps import evaluate, fit, run_experiment, split, training_pairs

TRAIN_P, TRAIN_R, TEST_P, TEST_R, DIM = 40, 6, 8, 20, 16
LEARNERS = {"linear": Learner("linear"), "mlp": Learner("mlp", params={"hidden": (16, 8), "epochs": 4})}


def protocol(learner: str = "linear", **kwargs) -> Protocol:
    """test_size 0.5: ignored, the data comes split."""
    return Protocol(LEARNERS[learner], LabelConfig(n_pairs=200), k=2, test_size=0.5, seed=3, sun_metrics=True,
                    **kwargs)


@pytest.fixture(scope="module")
def sun(tmp_path_factory):
    """The dataset of a tiny Sun layout (40 x 6 train, 8 x 20 test, dim 16), state kept in a temporary dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBRM_STATE_DIR", str(tmp_path_factory.mktemp("state")))
        layout = write_sun_layout(tmp_path_factory.mktemp("sun"), train_prompts=TRAIN_P, train_responses=TRAIN_R,
                                  test_prompts=TEST_P, test_responses=TEST_R, dim=DIM, seed=1, progress=False)
        yield load_dataset(layout.declaration)


@pytest.fixture(scope="module")
def in_memory(sun):
    """The same dataset with its vectors as one in-memory matrix."""
    X = np.asarray(sun.vectors)
    return dataclasses.replace(sun, vectors=X)


@pytest.fixture(scope="module")
def experiments(sun, in_memory):
    """{learner: (result on disk, result in memory)}."""
    return {name: (run_experiment(sun, sun.vectors, protocol(name), progress=False),
                   run_experiment(in_memory, in_memory.vectors, protocol(name), progress=False))
            for name in LEARNERS}


def prompts(ds, split_name):
    return np.sort(ds.responses.filter(pl.col("split") == split_name)["prompt_id"].unique().to_numpy())


def test_the_in_memory_copy_is_a_plain_matrix(sun, in_memory):
    assert isinstance(sun.vectors, Rows) and isinstance(in_memory.vectors, np.ndarray)
    assert in_memory.vectors.shape == (TRAIN_P * TRAIN_R + TEST_P * TEST_R, DIM)
    assert in_memory.vectors.dtype == np.float32 and in_memory.responses is sun.responses


@pytest.mark.parametrize("learner", list(LEARNERS))
def test_the_split_is_the_datas_own(sun, experiments, learner):
    result, _ = experiments[learner]
    parts = result.fit.split
    np.testing.assert_array_equal(parts.train, prompts(sun, "train"))
    np.testing.assert_array_equal(parts.test, prompts(sun, "test"))
    assert len(parts.train) == TRAIN_P and len(parts.test) == TEST_P  # not test_size 0.5 of 48
    again = split(sun, LabelConfig(), test_size=0.9, seed=7)  # neither test_size nor the seed moves it
    np.testing.assert_array_equal(again.train, parts.train)
    np.testing.assert_array_equal(again.test, parts.test)


def test_training_pairs_come_from_train_prompts_only(sun, experiments):
    result, _ = experiments["linear"]
    labels = result.fit.protocol.labels
    pairs = training_pairs(sun, labels, result.fit.split.train, 3)
    assert len(pairs) == result.fit.n_train_pairs == 200
    assert pairs["prompt_id"].str.starts_with("train-").all()
    assert pairs["chosen_id"].str.starts_with("train-").all() and pairs["rejected_id"].str.starts_with("train-").all()
    assert pairs["prompt_id"].n_unique() > 10  # drawn across the train prompts


@pytest.mark.parametrize("learner", list(LEARNERS))
def test_evaluation_is_on_test_prompts_only(sun, experiments, learner):
    ev = experiments[learner][0].evaluation
    test = prompts(sun, "test").tolist()
    assert ev.metrics.n_test_prompts == TEST_P and ev.metrics.per_prompt.prompt_id == test
    pool = ev.bon["pool"]
    assert pool.n_prompts == TEST_P and pool.n_responses == TEST_P * TEST_R and pool.n_max == TEST_R
    assert pool.per_prompt.prompt_id == test
    assert 0.5 < ev.metrics.accuracy <= 1  # the planted gold's linear part is learnable


@pytest.mark.parametrize("learner", list(LEARNERS))
def test_disk_and_memory_give_the_same_results(experiments, learner):
    disk, memory = experiments[learner]
    np.testing.assert_allclose(disk.fit.scores, memory.fit.scores, rtol=1e-6, atol=1e-6)
    assert disk.fit.n_train_pairs == memory.fit.n_train_pairs
    a, b = disk.to_dict(), memory.to_dict()
    assert a["metrics"]["accuracy"] == pytest.approx(b["metrics"]["accuracy"], abs=1e-9)
    assert a["metrics"]["member_accuracy"] == pytest.approx(b["metrics"]["member_accuracy"], abs=1e-9)
    for proxy, s in disk.evaluation.bon["pool"].proxies.items():
        t = memory.evaluation.bon["pool"].proxies[proxy]
        assert s.gold_at_n_max == pytest.approx(t.gold_at_n_max, abs=1e-6), proxy
    sa, sb = disk.evaluation.sun.frame(), memory.evaluation.sun.frame()
    assert sa.drop("value").equals(sb.drop("value")) and sa.height > 0
    np.testing.assert_allclose(sa["value"].to_numpy(), sb["value"].to_numpy(), rtol=1e-6, atol=1e-6)
    fa, fb = disk.evaluation.frame(), memory.evaluation.frame()
    assert fa.columns == fb.columns and fa.height == fb.height > 0
    np.testing.assert_allclose(fa["gold"].to_numpy(), fb["gold"].to_numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("learner", list(LEARNERS))
def test_the_fit_reads_only_its_pairs_rows(sun, monkeypatch, learner):
    asked = []
    real = Rows._gather

    def recording(self, rows):
        asked.append(np.array(rows))
        return real(self, rows)

    monkeypatch.setattr(Rows, "_gather", recording)
    p = protocol(learner)
    fitted = fit(sun, sun.vectors, p, progress=False)
    assert asked, "the fit gathered no rows"
    read = np.unique(np.concatenate(asked))
    pairs = training_pairs(sun, fitted.protocol.labels, fitted.split.train, p.seed)
    used = np.unique(pair_indices(pairs, sun.responses))
    assert set(read.tolist()) <= set(used.tolist())
    assert len(read) == len(used) < TRAIN_P * TRAIN_R  # all of them, and not the dataset
    train_rows = np.flatnonzero(sun.responses["split"].to_numpy() == "train")
    assert np.isin(read, train_rows).all()


@pytest.mark.parametrize("learner", list(LEARNERS))
def test_streaming_in_tiny_blocks_gives_the_same_scores(sun, experiments, monkeypatch, learner):
    result, _ = experiments[learner]
    monkeypatch.setattr(rows_module, "BLOCK_BYTES", 7 * 4 * DIM)  # 7 rows a block
    blocks = []
    real = Rows.blocks

    def counting(self, rows_per_block=None):
        for b in real(self, rows_per_block):
            blocks.append(len(b))
            yield b

    monkeypatch.setattr(Rows, "blocks", counting)
    scores = result.fit.ensemble.predict(sun.vectors)
    assert len(blocks) == -(-len(sun.vectors) // 7) and max(blocks) == 7
    assert scores.shape == result.fit.scores.shape
    np.testing.assert_allclose(scores, result.fit.scores, rtol=1e-6, atol=1e-6)


def test_no_length_rulers_without_texts(experiments):
    for result, _ in experiments.values():
        ev = result.evaluation
        assert "length" not in ev.bon["pool"].proxies and "shortest" not in ev.bon["pool"].proxies
        assert {"mean", "min"} <= set(ev.bon["pool"].proxies)
        assert ev.metrics.length_accuracy is None and ev.metrics.length_spearman is None
        assert ev.metrics.length_correlation is None
        assert "pool-lc" not in ev.bon and ev.length_effect is None and "texts" in ev.length_error


@pytest.mark.parametrize("control", ["posthoc", "odin"])
def test_length_control_is_refused_on_textless_data(sun, control):
    p = Protocol(Learner("linear", length_control=control), LabelConfig(n_pairs=50), k=2)
    with pytest.raises(EmbrmError) as info:
        fit(sun, sun.vectors, p, progress=False)
    msg = str(info.value)
    assert "texts" in msg and control in msg and "\n" not in msg


def test_sun_metrics_for_mean_min_and_first(sun, experiments):
    result, _ = experiments["linear"]
    sun_numbers = result.evaluation.sun
    assert sun_numbers is not None and sun_numbers.n_prompts == TEST_P
    frame = sun_numbers.frame()
    assert set(frame["reward"]) == {"mean", "min", "first"}
    assert {"accuracy", "spearman", "bon_gold", "bon_quantile"} <= set(frame["metric"])
    assert set(frame.filter(pl.col("metric") == "bon_gold")["n"]) == {2, 5, 10}  # SUN_N up to the pools of 20
    plain = evaluate(sun, sun.vectors, result.fit.ensemble, result.fit.split,
                     dataclasses.replace(result.fit.protocol, sun_metrics=False), scores=result.fit.scores)
    assert plain.sun is None and "sun" not in plain.to_dict()
    assert "sun" in result.evaluation.to_dict()


def test_pairs_per_prompt_draws_k_pairs_on_n_over_k_prompts(sun):
    labels = LabelConfig(n_pairs=50, pairs_per_prompt=5).resolved(sun)
    train = split(sun, labels, 0.2, 0).train
    pairs = training_pairs(sun, labels, train, 4)
    assert len(pairs) == 50
    counts = pairs.group_by("prompt_id").len()
    assert counts.height == 10 and set(counts["len"]) == {5}
    assert counts["prompt_id"].str.starts_with("train-").all()
    other = training_pairs(sun, LabelConfig(n_pairs=50).resolved(sun), train, 4)
    assert other["prompt_id"].n_unique() > 10  # without it: prompts drawn per pair


def test_new_protocol_options_leave_old_dicts_alone_and_round_trip():
    d = Protocol().to_dict()
    assert "sun_metrics" not in d and "pairs_per_prompt" not in d["labels"]
    assert Protocol.from_dict(d) == Protocol()
    p = Protocol(Learner("mlp", params={"hidden": (16, 8), "objective": "classification"}),
                 LabelConfig(beta=1.0, n_pairs=60, pairs_per_prompt=3), k=2, sun_metrics=True)
    d = p.to_dict()
    assert d["sun_metrics"] is True and d["labels"]["pairs_per_prompt"] == 3
    assert Protocol.from_dict(d) == p
    assert p.learner.name == "mlp.clf" and p.labels.name == "bt1.ppp3"
