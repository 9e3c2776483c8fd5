"""Commands over reward models: `fit` (train and save), `score` (every member's score), `bon-sim` (Best-of-n).

All three walk embrm.pipeline._steps: `fit` is pipeline.fit + save, `bon-sim` is load + pipeline.evaluate with the
protocol saved in the model, so their numbers equal a study job's for the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from embrm.cli.common import (
    CacheDirOpt,
    DataOptions,
    DatasetArg,
    EmbedderOptions,
    Format,
    FormatOpt,
    OutDirOpt,
    OverwriteOpt,
    SeedOpt,
    WithExcludedOpt,
    claim_out,
    command_line,
    friendly,
    grouped,
    options_named,
    out,
    parse_numbers,
    print_json,
    split_list,
)
from embrm.core import EmbrmError, cell, write_atomic
from embrm.data import Dataset, rrm_dataset
from embrm.evaluation import AGGREGATIONS, ALL_N_LIMIT, Evaluation, FitMetrics
from embrm.pipeline import (
    CALIBRATED,
    DEFAULT_LEARNERS,
    N_GRIDS,
    LabelConfig,
    Protocol,
    SavedModel,
    checked_n_grid,
    evaluate,
    load_model,
    model_embeddings,
)
from embrm.pipeline import fit as fit_model
from embrm.pipeline import score as score_model
from embrm.rewards import check_replaceable, package_versions


class Prompts(str, Enum):
    test = "test"
    all = "all"


ModelDirArg = Annotated[Path, typer.Argument(help="A model directory written by `embrm fit`.")]


@dataclass
class FitOptions:
    """The learner and the annotator. Defaults are the default study's (`embrm run`) where it has one: its annotator,
    split and K; the head is the linear one (the study also fits mlp, lgbm and laplace: --head)."""

    head: Annotated[str, typer.Option(
        "--head", help="linear | mlp | lgbm | laplace (Bayesian linear BT: members are posterior draws)")] = "linear"
    ensemble: Annotated[int, typer.Option("--ensemble", "-k", help="Number of members K.")] = 5
    mode: Annotated[Optional[str], typer.Option(
        "--mode", help="independent (default) | bootstrap | shared_trunk (mlp) | linear_heads (linear) | "
                       "posterior (laplace, its default) | features (linear, mlp: each member on a random subset "
                       "of the dimensions) | disjoint (each member on its own share of the training prompts).")] = None
    feature_fraction: Annotated[Optional[float], typer.Option(
        "--feature-fraction", help="--mode features: the share of the embedding dimensions each member sees "
                                   "(default 0.5).")] = None
    objective: Annotated[Optional[str], typer.Option("--objective", help="mlp/lgbm: bt | classification.")] = None
    hidden: Annotated[Optional[str], typer.Option(
        "--hidden", help="mlp: hidden widths (default 256,128, the default study's; Sun et al.: 1024,512).")] = None
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="mlp: maximum epochs (early stopping).")] = None
    labels: Annotated[str, typer.Option(
        "--labels", help="human (the dataset's pairs) | simulated (from gold) | auto.")] = "auto"
    beta: Annotated[float, typer.Option(
        "--beta", help="Simulated BT annotator: P(a>b) = sigmoid(beta (g_a - g_b) / std(gold)); the label error "
                       "rate it gives depends on the pool (reported as label_accuracy).")] = 10.0
    flip: Annotated[Optional[float], typer.Option(
        "--flip", help="Instead of --beta: flip this share of correct labels (Coste et al.: 0.25).")] = None
    n_pairs: Annotated[int, typer.Option("--n-pairs", help="Simulated annotations on the training prompts.")] = 1000
    across_prompts: Annotated[bool, typer.Option(
        "--across-prompts", help="Draw simulated pairs across prompts (Sun et al.).")] = False
    pairs_per_prompt: Annotated[Optional[int], typer.Option(
        "--pairs-per-prompt", help="Sun et al.'s annotator: --n-pairs / K random training prompts with K pairs each "
                                   "(default: each pair's prompt drawn uniformly).")] = None
    test_size: Annotated[float, typer.Option("--test-size", help="Share of prompts held out.")] = 0.2
    length_control: Annotated[str, typer.Option(
        "--length-control", help="none | posthoc (remove each member's within-prompt length slope) | posthoc_global "
                                 "| odin (quality + length heads; linear, mlp) | rrm (other prompts' answers as "
                                 "losers and ties).")] = "none"

    def protocol(self, seed: int, with_excluded: bool) -> Protocol:
        if self.head not in DEFAULT_LEARNERS:
            raise EmbrmError(f"--head {self.head!r}: use one of {', '.join(DEFAULT_LEARNERS)}")
        hidden = parse_numbers(self.hidden, "--hidden", int)
        if self.hidden is not None and not hidden:
            raise EmbrmError(f"--hidden {self.hidden!r}: give comma-separated layer widths, e.g. 256,128")
        with options_named(FIT_OPTION):  # the protocol's errors name their field; the user needs the option
            learner = replace(DEFAULT_LEARNERS[self.head], mode=self.mode, length_control=self.length_control)
            learner = learner.with_params(objective=self.objective, epochs=self.epochs,
                                          hidden=tuple(hidden) if hidden else None,
                                          feature_fraction=self.feature_fraction)
            labels = LabelConfig(self.labels, self.beta, self.flip, self.n_pairs, not self.across_prompts,
                                 self.pairs_per_prompt)
            return Protocol(learner, labels, self.ensemble, self.test_size, seed, with_excluded=with_excluded)


# Protocol field (EmbrmError.field) -> the `embrm fit` option that sets it
FIT_OPTION = {"seed": "--seed", "k": "--ensemble", "flip": "--flip", "beta": "--beta", "n_pairs": "--n-pairs",
              "test_size": "--test-size", "epochs": "--epochs", "hidden": "--hidden", "objective": "--objective",
              "mode": "--mode", "feature_fraction": "--feature-fraction", "length_control": "--length-control",
              "pairs_per_prompt": "--pairs-per-prompt"}
# ... and the `embrm bon-sim` option
BON_OPTION = {"lam": "--lam", "lcb_beta": "--lcb-beta", "temperature": "--temperature", "member": "--member",
              "coverage": "--coverage", "n_max": "--n-max", "aggregation": "--agg",
              "length_control_gold": "--lc-gold"}


@friendly
@grouped(options=FitOptions, data=DataOptions, embedder=EmbedderOptions)
def fit(ctx: typer.Context, dataset: DatasetArg, options: FitOptions, data: DataOptions, embedder: EmbedderOptions,
        out_dir: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write (must not exist).")],
        seed: SeedOpt = 0, cache_dir: CacheDirOpt = Path("cache"), format: FormatOpt = Format.text,
        overwrite: OverwriteOpt = False):
    """Train a K-member reward-model ensemble on embeddings (embedding what is missing) and save it.

    Defaults are the default study's annotator, split and K: 1,000 simulated BT(beta=10) pairs, 20 % of prompts held
    out, K = 5; the head is linear (--head mlp: the study's MLP, 256-128). Excluded responses (e.g. the hacking
    probes of alpaca-eval-models) never label or train.

    Example: embrm fit alpaca-eval-models --head mlp --ensemble 10 --flip 0.25 --out models/mlp-flip25
    """
    claim_out(ctx, out_dir, overwrite)
    if overwrite:
        check_replaceable(out_dir)
    protocol = options.protocol(seed, with_excluded=True)
    ds = data.load(dataset)
    _require_labels(ds, protocol)
    emb = embedder.embed(ds, cache_dir, format)
    augment = embedder.embed(rrm_dataset(ds), cache_dir, format).X if protocol.learner.length_control == "rrm" else None
    with options_named(FIT_OPTION):  # e.g. a --test-size that leaves no prompt on one side of this dataset
        fitted = fit_model(ds, emb.X, protocol, augment=augment, progress=None if format == Format.text else False)
    # check_out refused earlier results unless --overwrite; an --out written meanwhile is refused, not replaced
    fitted.save(out_dir, ds, emb.spec, emb.fingerprint, overwrite=overwrite, command=command_line(ctx))
    if format == Format.json:
        return print_json({"model_dir": str(out_dir), "label_accuracy": fitted.label_accuracy,
                           **fitted.metrics.to_dict()})
    print_fit_metrics(fitted.metrics, f"{protocol.learner.name} x{protocol.k} on {ds.name}: held-out "
                                      f"{fitted.metrics.against}")
    if fitted.label_accuracy is not None:
        out.print(f"{fitted.n_train_pairs} training labels ({fitted.protocol.labels.name}), "
                  f"{fitted.label_accuracy:.1%} agree with gold")
    out.print(f"saved -> {out_dir}")


def _require_labels(ds: Dataset, protocol: Protocol) -> None:
    """Fail before embedding when the dataset cannot give the protocol's labels and a prompt split."""
    source = protocol.labels.source
    if source == "simulated" or (source == "auto" and ds.pairs is None):
        ds.require_pool("fitting on simulated labels")
        return
    protocol.labels.resolved(ds)  # human labels need a pairs file
    if ds.pairs["prompt_id"].n_unique() < 2:
        raise EmbrmError(f"{ds.source}: the pairs are on only {ds.pairs['prompt_id'].n_unique()} prompt(s): a "
                         f"prompt split needs at least 2")


def _load_model(model_dir: Path) -> SavedModel:
    """load_model, every manifest problem named with the model dir (an edited protocol, split or embedder)."""
    try:
        model = load_model(model_dir)
        _ = model.embed_spec  # raises when the manifest lost its embedder: report it here, naming the model dir
    except EmbrmError as e:
        if str(model_dir) in str(e):
            raise
        raise EmbrmError(f"{model_dir}/manifest.json: {str(e).removeprefix('manifest.json: ')}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise EmbrmError(f"{model_dir}/manifest.json: protocol or split is malformed ({type(e).__name__}: {e}): "
                         f"refit the model (embrm fit)") from None
    if model.protocol.k != model.ensemble.k:
        raise EmbrmError(f"{model_dir}/manifest.json: the protocol says K = {model.protocol.k} but the ensemble holds "
                         f"{model.ensemble.k} members: refit the model (embrm fit)")
    return model


def print_fit_metrics(m: FitMetrics, title: str) -> None:
    lengths = m.length_accuracy is not None  # arrays without texts have no lengths
    table = Table("reward", "pairwise acc", "log-loss", "ECE", "Spearman with gold",
                  *(["Spearman with length"] if lengths else []), title=title)
    table.add_row("ensemble mean", cell(m.accuracy), cell(m.log_loss), cell(m.ece), cell(m.spearman),
                  *([cell(m.length_correlation)] if lengths else []))
    accs = m.member_accuracy
    table.add_row(f"members (min..max of {len(accs)})", f"{min(accs):.3f}..{max(accs):.3f}", "", "", "",
                  *([""] if lengths else []))
    if lengths:
        table.add_row("length (longer is better)", cell(m.length_accuracy), "", "", cell(m.length_spearman), "1.000")
    table.add_row("random (expected)", "0.500", "", "", "0.000", *(["0.000"] if lengths else []))
    out.print(table)
    out.print(f"{m.n_test_pairs} held-out pairs on {m.n_test_prompts} prompts")
    if m.calibrated_ece is not None:
        out.print(f"calibration of the mean's pairwise probability: MCE {m.mce:.3f}, Brier {m.brier:.3f}; ECE after "
                  f"temperature scaling (T = {m.temperature:.2f}, cross-fitted over held-out prompts) "
                  f"{m.calibrated_ece:.3f}")


@friendly
@grouped(data=DataOptions)
def score(ctx: typer.Context, model_dir: ModelDirArg, dataset: DatasetArg, data: DataOptions,
          out_file: Annotated[Path, typer.Option("--out", "-o", help="Parquet: response_id + one column per "
                                                                     "member.")],
          cache_dir: CacheDirOpt = Path("cache"), overwrite: OverwriteOpt = False):
    """Write every member's score for every response of a dataset to Parquet.

    Example: embrm score models/mlp-flip25 alpaca-eval-models --out scores.parquet
    """
    claim_out(ctx, out_file, overwrite, file=True)
    model = _load_model(model_dir)
    ds = data.load(dataset)
    frame = score_model(model, ds, model_embeddings(model, ds, cache_dir))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_file, frame.write_parquet)  # never a half-written file
    out.print(f"{frame.width - 2} score columns for {len(frame)} responses -> {out_file}")


@friendly
@grouped(data=DataOptions)
def bon_sim(
    ctx: typer.Context, dataset: DatasetArg, data: DataOptions,
    model_dir: Annotated[Path, typer.Option("--model", "-m", help="A model directory written by `embrm fit`.")],
    agg: Annotated[Optional[str], typer.Option(
        "--agg", help=f"Comma-separated aggregations of {', '.join(AGGREGATIONS + CALIBRATED)} (default: the "
                      f"model's; conformal: a split-conformal lower bound calibrated on held-out gold).")] = None,
    lam: Annotated[Optional[float], typer.Option("--lam", help="UWO: mean - lam * variance.")] = None,
    lcb_beta: Annotated[Optional[float], typer.Option("--lcb-beta", help="LCB: mean - beta * std.")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="Soft-min temperature.")] = None,
    member: Annotated[Optional[int], typer.Option("--member", help="The member 'single' reports.")] = None,
    coverage: Annotated[Optional[float], typer.Option(
        "--coverage", help="conformal: the share of held-out responses the lower bound holds for (0.9).")] = None,
    n_max: Annotated[Optional[int], typer.Option("--n-max", help="Largest n (default: the largest pool).")] = None,
    n_grid: Annotated[Optional[str], typer.Option(
        "--n-grid", help="The n of the curves: all | log (about 100 log-spaced n, with 1 and N) | comma-separated "
                         f"values (default: all n up to pools of {ALL_N_LIMIT:,}, log beyond).")] = None,
    prompts: Annotated[Prompts, typer.Option("--prompts", help="test (the model's held-out prompts) | all.")] =
    Prompts.test, with_excluded: WithExcludedOpt = True,
    sun_metrics: Annotated[bool, typer.Option(
        "--sun-metrics", help="Also Sun et al.'s numbers (Best-of-N at 2..500 by one random subsample, the pick's "
                              "quantile, pairwise accuracy, Spearman; ensemble mean, min and first member).")] = False,
    lc_gold: Annotated[Optional[str], typer.Option(
        "--lc-gold", help="The length-controlled gold of pool-lc: alpacaeval (AlpacaEval 2's length-controlled GLM) "
                          "| loglinear (one slope on log(1 + characters)); default: the model's protocol's.")] = None,
    out_dir: OutDirOpt = None,
    cache_dir: CacheDirOpt = Path("cache"), format: FormatOpt = Format.text, overwrite: OverwriteOpt = False,
):
    """Exact Best-of-n curves (every n; a log grid of n for pools of thousands) of a model's aggregations vs the
    length ruler and a random pick, vs KL.

    Example: embrm bon-sim alpaca-eval-models --model models/mlp-flip25 --agg mean,min,uwo --out results/bon
    """
    claim_out(ctx, out_dir, overwrite)
    model = _load_model(model_dir)
    changes = dict(lam=lam, lcb_beta=lcb_beta, temperature=temperature, member=member, coverage=coverage, n_max=n_max,
                   n_grid=_n_grid(n_grid), length_control_gold=lc_gold,
                   aggregations=tuple(split_list([agg])) if agg is not None else None)
    # the Protocol checks every value (aggregation names, member in 0..K-1, ...) before the data is read
    with options_named(BON_OPTION):
        protocol = replace(model.protocol, with_excluded=with_excluded, sun_metrics=sun_metrics,
                           **{k: v for k, v in changes.items() if v is not None})
    ds = data.load(dataset)
    ds.require_pool("Best-of-n simulation")
    result = evaluate(ds, model_embeddings(model, ds, cache_dir), model.ensemble, model.split, protocol,
                      prompts=prompts.value, progress=None if format == Format.text else False)
    extra = {"dataset": ds.name, "model_dir": str(model_dir), "prompts": prompts.value, "protocol": protocol.to_dict(),
             "command": command_line(ctx), "packages": package_versions()}
    if out_dir is not None:
        result.write(out_dir, title=f"Best-of-n on {ds.name} ({prompts.value} prompts), {model_dir.name}", extra=extra)
    if format == Format.json:
        return print_json({**extra, **result.to_dict()})
    print_bon(result)
    if out_dir is not None:
        out.print(f"curves, summary.json and plots -> {out_dir}")


def _n_grid(value: str | None) -> str | tuple | None:
    if value is None or value in N_GRIDS:
        return value
    try:
        values = [int(v) for v in split_list([value])]
    except ValueError:
        raise EmbrmError(f"--n-grid {value}: give {' or '.join(N_GRIDS)} or comma-separated integers n >= 1") from None
    try:
        return checked_n_grid(values)
    except EmbrmError as e:
        raise EmbrmError(f"--n-grid {value}: {e}") from None


def print_bon(result: Evaluation) -> None:
    """One row per proxy: Best-of-N on the pool's gold, on its length-controlled gold, and with the excluded
    responses (e.g. hacking probes) back in the pool; then the curves' shape."""
    pool = result.bon.get("pool")
    if pool is None:
        return
    lc = result.bon.get("pool-lc")
    probes = next((b for name, b in result.bon.items() if name.startswith("pool+")), None)
    what = probes.pool.removeprefix("pool+") if probes else ""
    lengths = any(s.length_correlation is not None for s in pool.proxies.values())  # none for arrays without texts
    table = Table("proxy", "gold@N", "gain", *(["gain, length-controlled gold"] if lc else []),
                  *([f"{what} picked", f"gain, {what} in"] if probes else []),
                  *(["Spearman with length"] if lengths else []), "best n",
                  title=f"Best-of-n, {pool.grid} on {pool.n_prompts} prompts: random pick (expected) "
                        f"{pool.random_at_n_max:.3f}, oracle {pool.oracle_at_n_max:.3f}")
    for proxy, s in pool.proxies.items():
        extra = [cell(lc.proxies[proxy].gain_at_n_max)] if lc else []
        if probes:
            extra += [cell(probes.proxies[proxy].excluded_pick_rate), cell(probes.proxies[proxy].gain_at_n_max)]
        table.add_row(proxy, cell(s.gold_at_n_max), cell(s.gain_at_n_max), *extra,
                      *([cell(s.length_correlation)] if lengths else []), str(s.best_n))
    out.print(table)
    if result.sun is not None:
        out.print(result.sun.markdown(), markup=False)
    if result.conformal_error:
        out.print(f"no conformal lower bound: {result.conformal_error}")
    elif result.conformal:
        c = result.conformal
        out.print(f"conformal lower bound: target coverage {c.coverage:.2f}, held-out coverage "
                  f"{c.empirical_coverage:.3f} (each prompt judged by a bound calibrated on the other half)")
    if result.length_error:
        out.print(f"no length-controlled gold: {result.length_error}")
    elif result.length_effect:
        e = result.length_effect
        out.print(f"length-controlled gold ({e.gold}): {e.description or e.gold}", markup=False)
        if e.effect is not None:
            out.print(f"log-linear length fit: gold - {e.effect:.3f} x log(1 + characters) (fitted with prompt"
                      f"{' and ' + e.source if e.source else ''} effects on {e.n_rows} responses)")
    if result.published:
        t = Table("published reward model", "prompts", "gold of pick", "random", "oracle", "gain",
                  title="Published reward models' best-of-N picks (same prompts; scored picks only)")
        for p in result.published:
            t.add_row(p.reward_model, str(p.n_prompts), *(cell(v) for v in (p.gold, p.random, p.oracle, p.gain)))
        out.print(t)
