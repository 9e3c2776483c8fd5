"""The findings a study's per-prompt records support: over-optimisation with a cross-fitted peak, ensemble size,
and which learners count as plain (no length control)."""

from dataclasses import replace

import numpy as np

from embrm.evaluation import BonResult, Evaluation, FitMetrics, PromptPicks
from embrm.pipeline import Learner, Protocol
from embrm.studies._findings import findings
from embrm.studies._store import JobResult

GRID = [1, 2, 4, 8, 16]


def run(seed: int, learner: str, curve: np.ndarray, *, k: int = 5, control: str = "none", noise: str = "bt10",
        prompts: int = 30) -> JobResult:
    """A job result with the fields findings read: per-prompt random / oracle / top pick and the mean's curve; its
    learner facts (length control, own ensemble size) come from its protocol's learner, never from its name."""
    rng = np.random.default_rng([seed, len(learner)])
    noisy = curve[None, :] + 0.02 * rng.standard_normal((prompts, len(curve)))
    picks = PromptPicks([f"s{seed}p{i:02d}" for i in range(prompts)], [0.0] * prompts, [1.0] * prompts,
                        {"mean": noisy[:, -1].tolist(), "single": noisy[:, -1].tolist()}, n=list(GRID),
                        mean_curve=noisy.tolist())
    spec = Learner(learner.split(".")[0], length_control=control, k=k if learner.endswith(f".k{k}") else None)
    assert spec.name == learner
    bon = BonResult("pool", None, {}, GRID[-1], prompts, prompts, 0.0, 1.0, picks)
    metrics = FitMetrics("gold order", 0, prompts, 0.5, [], 0.0, 0.0, 0.5)
    return JobResult(f"d/{noise}/{learner}/seed{seed}", "pool", "d", learner, noise, seed, k,
                     Protocol(spec, seed=seed), 0, None, Evaluation(metrics, {"pool": bon}), 0.0, 0)


def by_key(found) -> dict:
    return {f.key: f for f in found}


def test_a_curve_that_peaks_and_falls_is_overoptimisation_and_a_rising_one_is_not():
    import polars as pl

    falls = np.array([0.1, 0.3, 0.6, 0.4, 0.2])
    rises = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    found = by_key(findings([run(s, "linear", falls) for s in range(3)], pl.DataFrame()))
    drop = found["d|bt10|overoptimisation-drop"]
    assert drop.verdict == "reproduced" and abs(drop.effect.estimate - 0.4) < 0.02
    found = by_key(findings([run(s, "linear", rises) for s in range(3)], pl.DataFrame()))
    still = found["d|bt10|overoptimisation-drop"]  # the cross-fitted peak is n = N itself: no drop at all
    assert still.verdict.startswith("not reproduced") and still.effect.estimate == 0


def test_a_flat_curve_is_not_called_overoptimised_by_picking_its_noisiest_point():
    import polars as pl

    flat = np.full(len(GRID), 0.3)
    drop = by_key(findings([run(s, "linear", flat) for s in range(4)], pl.DataFrame()))["d|bt10|overoptimisation-drop"]
    assert drop.verdict.startswith("not reproduced") and abs(drop.effect.estimate) < 0.01


def test_ensemble_size_is_compared_at_the_same_noise_and_seed_and_sized_learners_stay_plain():
    import polars as pl

    results = [run(s, "linear", np.array([0.1, 0.2, 0.3, 0.3, 0.3])) for s in range(3)]
    results += [run(s, "linear.k10", np.array([0.1, 0.2, 0.3, 0.4, 0.5]), k=10) for s in range(3)]
    results += [run(s, "linear.posthoc", np.array([0.1, 0.2, 0.3, 0.4, 0.5]), control="posthoc") for s in range(3)]
    found = by_key(findings(results, pl.DataFrame()))
    size = found["d|bt10|linear.k10-vs-linear"]
    assert size.direction == +1 and size.verdict == "reproduced" and abs(size.effect.estimate - 0.2) < 0.02
    assert "K = 10" in size.claim and "K = 5" in size.claim
    # the posthoc learner is a length control of `linear`, never pooled into the papers' claims
    assert found["d|bt10|mean-vs-single"].effect.n_units == 6


def test_prompts_whose_pools_are_smaller_than_the_peak_n_keep_their_whole_pool_and_every_prompt():
    import polars as pl

    results = []
    for s in range(3):
        for learner in ("linear", "mlp"):
            r = run(s, learner, np.array([0.1, 0.3, 0.6, 0.4, 0.2]))
            pp = r.bon["pool"].per_prompt
            for i, row in enumerate(pp.mean_curve[:5]):  # five prompts have pools of 2: no value at n = 4, 8, 16
                row[2:] = [float("nan")] * 3
                pp.pick["mean"][i] = row[1]
            if s == 2:  # another seed's largest pool is smaller: a shorter grid
                pp.n, pp.mean_curve = GRID[:4], [row[:4] for row in pp.mean_curve]
            results.append(r)
    drop = by_key(findings(results, pl.DataFrame()))["d|bt10|overoptimisation-drop"]
    assert drop.effect.n_prompts == 90 and drop.verdict == "reproduced"


def test_members_that_differ_are_compared_with_their_independent_twin_at_the_same_seed():
    import polars as pl

    curve = np.array([0.1, 0.2, 0.3, 0.3, 0.3])
    diverse = Learner("linear", mode="features", params={"feature_fraction": 0.25})
    results = []
    for s in range(4):
        twin = run(s, "linear", curve)
        other = replace(run(s, "linear", curve), learner=diverse.name, protocol=Protocol(diverse, seed=s))
        for r, edge in ((twin, 0.0), (other, 0.2)):  # min - mean: 0 for independent members, +0.2 for diverse ones
            picks = r.bon["pool"].per_prompt.pick
            picks["min"] = (np.asarray(picks["mean"]) + edge).tolist()
        results += [twin, other]
    assert other.independent_learner == "linear" and twin.independent_learner is None
    found = by_key(findings(results, pl.DataFrame()))
    effect = found["d|bt10|min-vs-mean|linear-feat0.25-vs-linear"]
    assert effect.verdict == "reproduced" and abs(effect.effect.estimate - 0.2) < 1e-9
    assert effect.effect.n_seeds == 4 and "linear-feat0.25" in effect.claim and "(linear)" in effect.claim
