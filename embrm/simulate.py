"""Best-of-n simulation of a trained ensemble on a pool (`embrm bon-sim`): proxies, curves, summary, files.

    result = bon_sim("models/rm", load_dataset("alpaca-eval-models"))      # held-out prompts of the model's split
    result.summary["aggregations"]["min"]["gain_at_n_max"]
    result.write("results/bon")                                            # curves.parquet/.csv, summary.json, PNGs

Steps: every member scores every response; members are standardised on the TRAINING responses (the model's saved
split; all rows when the pool holds none of them), aggregated (embrm.aggregate), and each proxy goes through the
exact Best-of-n estimator (embrm.bon) on the evaluation prompts' scored responses. Beside the aggregations the
curves hold the WARM weight-averaged model (MLP ensembles), a length-only reward ("longer is better") and a random
reward, so a reader sees what a learned reward adds. On alpaca-eval-bon16 the six published reward models' picks
are scored on the same evaluation prompts (only where their pick is a scored sample, with random and oracle
on those prompts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from embrm.aggregate import AGGREGATIONS, aggregate_all, standardize
from embrm.bon import BonCurves, bon_curves, curves_frame, fit_gao, spearman_per_prompt
from embrm.data import Dataset
from embrm.errors import EmbrmError
from embrm.metrics import length_reward, random_reward

BASELINES = ("length", "random")


@dataclass
class BonSimResult:
    curves: BonCurves
    summary: dict

    @property
    def frame(self) -> pl.DataFrame:
        return curves_frame(self.curves)

    def table_rows(self) -> list[tuple]:
        """(proxy, gold@n_max, gain@n_max, percentile@n_max, best n, spearman, alpha, beta) per proxy."""
        return [(name, s["gold_at_n_max"], s["gain_at_n_max"], s["percentile_at_n_max"], s["best_n"],
                 s["spearman"], s["gao_alpha"], s["gao_beta"]) for name, s in self.summary["aggregations"].items()]

    def write(self, out_dir, *, title: str | None = None) -> dict[str, Path]:
        """curves.parquet, curves.csv, summary.json, gold_vs_kl.png, gao_fit.png under out_dir."""
        from embrm.plots import plot_bon, plot_gao_fit

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        frame = self.frame
        paths = {"curves": out / "curves.parquet", "csv": out / "curves.csv", "summary": out / "summary.json"}
        frame.write_parquet(paths["curves"])
        frame.write_csv(paths["csv"])
        paths["summary"].write_text(json.dumps(self.summary, indent=2, default=str) + "\n")
        refs = {p["reward_model"]: p["gold"] for p in self.summary.get("published_picks", [])}
        paths["plot"] = plot_bon(self.curves, out / "gold_vs_kl.png", references=refs or None, title=title)
        paths["gao"] = plot_gao_fit(self.curves, out / "gao_fit.png")
        return paths


def ensemble_proxies(scores: np.ndarray, reference_rows: np.ndarray, aggregations=AGGREGATIONS, **params) -> dict:
    """{aggregation: (n,) proxy} from member scores (n, K), standardised on reference_rows (bool mask)."""
    ref = reference_rows if reference_rows.any() else None
    return aggregate_all(standardize(scores, ref), aggregations, **params)


def baseline_proxies(responses: pl.DataFrame, seed: int = 0) -> dict:
    """Length (z-scored, so its proxy curve shares the members' scale; BoN picks are unchanged) and random."""
    length = length_reward(responses)
    length = (length - length.mean()) / (length.std() or 1.0)
    return {"length": length, "random": random_reward(len(responses), seed)}


def evaluate_proxies(responses: pl.DataFrame, proxies: dict, eval_mask: np.ndarray, n_max: int | None = None,
                     ) -> BonSimResult:
    """Exact Best-of-n curves of every proxy on the scored rows where eval_mask, with a per-proxy summary."""
    rows = eval_mask & responses["scored"].to_numpy()
    if not rows.any():
        raise EmbrmError("no scored responses on the evaluation prompts: evaluate on --prompts all, or use a pool "
                         "with gold scores")
    gold = responses["gold"].to_numpy().astype(np.float64)
    pid = responses["prompt_id"].to_numpy()
    curves = bon_curves(pid, proxies, gold, n_max, mask=rows)
    _, rho = spearman_per_prompt(pid, proxies, gold, mask=rows)
    rho = np.asarray(rho).reshape(len(rho), -1)
    gain = curves.gain[:, -1]
    summary = {
        "n_max": int(curves.n[-1]), "n_prompts": int(len(curves.prompts)), "n_responses": int(rows.sum()),
        "random_at_n_max": float(curves.random[-1]), "oracle_at_n_max": float(curves.oracle[-1]),
        "aggregations": {},
    }
    for j, name in enumerate(curves.aggregations):
        alpha, beta = _gao(curves, j)
        best = int(np.nanargmax(curves.gold[j]))
        summary["aggregations"][name] = {
            "gold_at_n_max": float(curves.gold[j, -1]), "gain_at_n_max": float(gain[j]),
            "percentile_at_n_max": float(curves.percentile[j, -1]), "proxy_at_n_max": float(curves.proxy[j, -1]),
            "best_n": int(curves.n[best]), "gold_at_best_n": float(curves.gold[j, best]),
            "spearman": float(np.nanmean(rho[:, j])) if np.isfinite(rho[:, j]).any() else None,
            "gao_alpha": alpha, "gao_beta": beta,
        }
    return BonSimResult(curves, summary)


def _gao(curves: BonCurves, j: int) -> tuple[float | None, float | None]:
    if len(curves.n) < 3:
        return None, None
    return fit_gao(curves.d, curves.gold[j] - curves.gold[j, 0])


def published_picks(responses: pl.DataFrame, eval_mask: np.ndarray, data_dir=None) -> list[dict]:
    """The six published reward models' Best-of-16 picks on alpaca-eval-bon16, scored on the evaluation prompts
    where the pick has gold, with random (pool mean) and oracle (pool max) of the scored pool on those prompts."""
    from embrm.datasets import PUBLISHED_PICKS, fetch

    picks = pl.read_parquet(fetch(PUBLISHED_PICKS, data_dir)).with_columns(pl.col("prompt_id").cast(pl.Utf8))
    pools = (responses.filter(pl.Series(eval_mask) & pl.col("scored")).group_by("prompt_id")
             .agg(random=pl.col("gold").mean(), oracle=pl.col("gold").max()))
    gold = responses.filter(pl.col("scored")).select("response_id", "gold")
    rows = []
    for col in [c for c in picks.columns if c.startswith("pick_")]:
        scored = (picks.select("prompt_id", response_id=pl.col("prompt_id") + ":" + pl.col(col).cast(pl.Utf8))
                  .join(gold, on="response_id").join(pools, on="prompt_id"))
        if scored.height == 0:
            continue
        g, r, o = (float(scored[c].mean()) for c in ("gold", "random", "oracle"))
        rows.append({"reward_model": col.removeprefix("pick_"), "n_prompts": scored.height, "gold": g,
                     "random": r, "oracle": o, "gain": (g - r) / (o - r) if o > r else None})
    return rows


def prompt_mask(responses: pl.DataFrame, prompt_ids) -> np.ndarray:
    return responses["prompt_id"].is_in([str(p) for p in prompt_ids]).to_numpy()


def bon_sim(model_dir, data: Dataset, *, cache_dir="cache", aggregations=AGGREGATIONS, lam: float = 0.5,
            beta: float = 1.0, temperature: float = 1.0, member: int = 0, n_max: int | None = None,
            prompts: str = "test", baselines: bool = True, seed: int = 0, data_dir=None) -> BonSimResult:
    """Best-of-n curves of a saved ensemble's aggregations (and baselines) on a pool's evaluation prompts.

    prompts: "test" (the model's held-out prompts; default) or "all". seed: the random baseline's seed."""
    from embrm.train import load_model

    if prompts not in ("test", "all"):
        raise EmbrmError(f"--prompts must be test or all, got {prompts!r}")
    if not data.has_gold:
        raise EmbrmError(f"{data.source}: no gold scores: Best-of-n simulation needs a pool with a gold column")
    ensemble, manifest, X = load_model(model_dir, data, cache_dir)
    split = manifest.get("split") or {}
    responses = data.responses
    train_rows = prompt_mask(responses, split.get("train_prompts", []))
    eval_rows = np.ones(len(responses), bool) if prompts == "all" else prompt_mask(responses, split.get("test_prompts", []))
    if prompts == "test" and not eval_rows.any():
        raise EmbrmError(f"{model_dir} was fitted on {manifest.get('dataset')}: none of its held-out prompts are in "
                         f"{data.name}; pass --prompts all to evaluate on every prompt")
    proxies = ensemble_proxies(ensemble.predict(X), train_rows, aggregations, lam=lam, beta=beta,
                               temperature=temperature, member=member)
    if ensemble.warm_ is not None:
        proxies["warm"] = ensemble.warm_.predict(X)
    if baselines:
        proxies.update(baseline_proxies(responses, seed))
    result = evaluate_proxies(responses, proxies, eval_rows, n_max)
    result.summary.update(dataset=data.name, model_dir=str(model_dir), prompts=prompts, seed=seed,
                          standardised_on="training responses" if train_rows.any() else "all responses",
                          params={"lam": lam, "beta": beta, "temperature": temperature, "member": member},
                          ensemble={k: manifest.get("ensemble", {}).get(k) for k in ("head", "mode", "k")})
    if data.name == "alpaca-eval-bon16":
        result.summary["published_picks"] = published_picks(responses, eval_rows, data_dir)
    return result
