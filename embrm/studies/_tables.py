"""Turn a study's job results into tidy Parquet tables, seed-aggregated tables (mean and 95 % interval), plots and
report.md.

Intervals: mean over seeds +- t(0.975, n-1) * sd / sqrt(n) (a Student-t interval over the seeds; with one seed no
interval is given). Findings compare methods with PAIRED differences (same dataset, noise, learner and seed), so
the seed-to-seed spread of the pool split does not hide a consistent difference.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl

from embrm.core import file_stem, fmt, md_table
from embrm.evaluation import LOG_T_BOUNDS, plot_bon, plot_reliability, pooled_reliability
from embrm.studies._store import JobResult

BASELINES = ("length", "shortest")  # rulers beside every reward (the random pick is its own row: an expectation)


# ----------------------------------------------------------------------------- tidy tables

def fit_table(results: list[JobResult]) -> pl.DataFrame:
    rows = []
    for r in results:
        m, conformal = r.metrics, r.evaluation.conformal
        rows.append({"dataset": r.dataset, "noise": r.noise, "learner": r.learner, "seed": r.seed,
                     "accuracy": m.accuracy, "member_accuracy": float(np.mean(m.member_accuracy)),
                     "log_loss": m.log_loss, "ece": m.ece, "spearman": m.spearman,
                     "length_accuracy": m.length_accuracy, "length_spearman": m.length_spearman,
                     "length_correlation": m.length_correlation,
                     "mce": m.mce, "brier": m.brier, "calibrated_ece": m.calibrated_ece,
                     "temperature": m.temperature,
                     "conformal_coverage": conformal and conformal.empirical_coverage,
                     "conformal_target": conformal and conformal.coverage,
                     "conformal_error": r.evaluation.conformal_error,
                     "against": m.against,
                     "n_test_pairs": m.n_test_pairs, "n_train_pairs": r.n_train_pairs,
                     "label_accuracy": r.label_accuracy, "seconds": r.seconds})
    return pl.DataFrame(rows, infer_schema_length=None)


def bon_table(results: list[JobResult]) -> pl.DataFrame:
    rows = []
    for r in results:
        for variant, s in r.bon.items():
            for proxy, a in s.proxies.items():
                rows.append({"dataset": r.dataset, "variant": variant, "noise": r.noise,
                             "learner": r.learner, "seed": r.seed, "proxy": proxy,
                             "gold": a.gold_at_n_max, "gain": a.gain_at_n_max,
                             "percentile": a.percentile_at_n_max, "best_n": a.best_n,
                             "gold_at_best_n": a.gold_at_best_n, "spearman": a.spearman,
                             "gao_alpha": a.gao_alpha, "gao_beta": a.gao_beta,
                             "excluded_pick_rate": a.excluded_pick_rate,
                             "length_correlation": a.length_correlation, "n_max": s.n_max,
                             "n_prompts": s.n_prompts,
                             "random": s.random_at_n_max, "oracle": s.oracle_at_n_max})
    return pl.DataFrame(rows, infer_schema_length=None)


def published_table(results: list[JobResult]) -> pl.DataFrame:
    rows = [{"dataset": r.dataset, "seed": r.seed, **asdict(p)} for r in results for p in r.published]
    if not rows:
        return pl.DataFrame()
    return pl.DataFrame(rows, infer_schema_length=None).unique(["dataset", "seed", "reward_model"], maintain_order=True)


def sun_table(results: list[JobResult]) -> pl.DataFrame:
    """Sun et al.'s numbers of every job that computed them (Protocol.sun_metrics): one row per (job, reward,
    metric, n)."""
    frames = [r.evaluation.sun.frame().with_columns(dataset=pl.lit(r.dataset), learner=pl.lit(r.learner),
                                                    noise=pl.lit(r.noise), seed=pl.lit(r.seed))
              for r in results if r.evaluation.sun is not None]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def sun_markdown(sun: pl.DataFrame, dataset: str) -> str:
    """Per learner x annotator x reward (ensemble mean, min, first member): Sun et al.'s accuracy, Spearman and
    Best-of-N gold and quantile at the largest N, each a mean over seeds with its 95 % interval."""
    sub = sun.filter(pl.col("dataset") == dataset)
    n_top = int(sub.filter(pl.col("metric") == "bon_gold")["n"].max())
    wide = (sub.filter(pl.col("n").is_null() | (pl.col("n") == n_top))
            .pivot("metric", index=["learner", "noise", "reward", "seed"], values="value"))
    metrics = [m for m in ("accuracy", "spearman", "bon_gold", "bon_quantile") if m in wide.columns]
    stats_ = summarise(wide, ["learner", "noise", "reward"], metrics)
    head = ["learner", "annotator", "reward", "accuracy", "Spearman", f"BoN gold (N = {n_top})",
            f"BoN quantile (N = {n_top})"]
    rows = [[r["learner"], r["noise"], r["reward"], *(fmt(r[m], r[f"{m}_ci"]) for m in metrics)]
            for r in stats_.iter_rows(named=True)]
    return md_table(head[:3 + len(metrics)], rows)


# ----------------------------------------------------------------------------- seed statistics

def interval(values) -> tuple[float, float]:
    """(mean, half-width of the 95 % Student-t interval over seeds; NaN for one value)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def summarise(frame: pl.DataFrame, by: list[str], metrics: list[str]) -> pl.DataFrame:
    """Mean and 95 % half-width over seeds of each metric, per group (groups kept in first-seen order)."""
    rows = []
    for keys, group in frame.group_by(by, maintain_order=True):
        row = dict(zip(by, keys))
        for m in metrics:
            row[m], row[f"{m}_ci"] = interval(group[m].to_list())
        row["n_seeds"] = group["seed"].n_unique()
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def grid_mean(frame: pl.DataFrame, metric: str) -> tuple[float, float]:
    """A metric averaged over the study's grid (every learner and annotator) within each seed, then its mean and
    95 % interval over the seeds (as `interval`); NaN when no job measured it."""
    values = frame.filter(pl.col(metric).is_not_null()) if metric in frame.columns else frame.clear()
    if values.is_empty():
        return float("nan"), float("nan")
    per_seed = values.group_by("seed").agg(pl.col(metric).cast(pl.Float64).mean()).sort("seed")  # one order: one sum
    return interval(per_seed[metric].to_list())


def paired(frame: pl.DataFrame, a: str, b: str, metric: str = "gain", **where) -> tuple[float, float, int]:
    """Mean paired difference a - b of `metric` between two proxies over (learner, noise, seed) units, with its
    95 % interval and the number of pairs."""
    f = frame.filter(*[pl.col(k) == v for k, v in where.items()]) if where else frame
    keys = ["dataset", "variant", "noise", "learner", "seed"]
    joined = (f.filter(pl.col("proxy") == a).select(*keys, x=pl.col(metric))
              .join(f.filter(pl.col("proxy") == b).select(*keys, y=pl.col(metric)), on=keys))
    d = (joined["x"] - joined["y"]).to_list()
    mean, half = interval(d)
    return mean, half, len(d)


# ----------------------------------------------------------------------------- markdown

def bon_markdown(bon: pl.DataFrame, dataset: str, variant: str, noises: list[str], metric: str = "gain") -> str:
    """Rows: learner x proxy (baselines once); columns: metric per noise, mean ± 95 % interval over seeds."""
    sub = bon.filter((pl.col("dataset") == dataset) & (pl.col("variant") == variant))
    stats_ = summarise(sub, ["learner", "proxy", "noise"], [metric, "gold"])
    first = sub["learner"][0]
    rows = []
    for (learner, proxy), _ in stats_.group_by(["learner", "proxy"], maintain_order=True):
        if proxy in BASELINES and learner != first:
            continue
        label = f"{proxy} (baseline)" if proxy in BASELINES else f"{learner} · {proxy}"
        cells = []
        for noise in noises:
            hit = stats_.filter((pl.col("learner") == learner) & (pl.col("proxy") == proxy) & (pl.col("noise") == noise))
            cells += ["-", "-"] if hit.is_empty() else [fmt(hit["gold"][0], hit["gold_ci"][0]),
                                                        fmt(hit[metric][0], hit[f"{metric}_ci"][0])]
        rows.append([label, *cells])
    pools = sub.unique(["noise", "seed"], maintain_order=True)  # the pool mean: the same for every proxy
    cells = []
    for noise in noises:
        r = pools.filter(pl.col("noise") == noise)["random"].to_list()
        cells += ["-", "-"] if not r else [fmt(*interval(r)), "0 (by definition)"]
    rows.append(["random pick (expected)", *cells])
    header = ["reward · aggregation"] + [f"{h} ({n})" for n in noises for h in ("gold@N", "gain")]
    return md_table(header, rows)


def _cells(stats_: pl.DataFrame, learner: str, proxy: str, noise: str, metric: str) -> str:
    if stats_.is_empty():
        return "-"
    hit = stats_.filter((pl.col("learner") == learner) & (pl.col("proxy") == proxy) & (pl.col("noise") == noise))
    return "-" if hit.is_empty() else fmt(hit[metric][0], hit[f"{metric}_ci"][0])


def _reward_rows(sub: pl.DataFrame) -> list[tuple[str, str, str]]:
    """(label, learner, proxy) per reward row: every learner's aggregations, the baselines once."""
    first = sub["learner"][0]
    pairs = sub.select("learner", "proxy").unique(maintain_order=True).iter_rows()
    return [(f"{p} (baseline)" if p in BASELINES else f"{l} · {p}", l, p) for l, p in pairs
            if p not in BASELINES or l == first]


def length_markdown(bon: pl.DataFrame, dataset: str, noises: list[str]) -> str:
    """Rows: rewards; per noise: gain on gold, gain on length-controlled gold, within-prompt Spearman with length."""
    both = bon.filter((pl.col("dataset") == dataset) & pl.col("variant").is_in(["pool", "pool-lc"]))
    raw = summarise(both.filter(pl.col("variant") == "pool"), ["learner", "proxy", "noise"],
                    ["gain", "length_correlation"])
    lc = summarise(both.filter(pl.col("variant") == "pool-lc"), ["learner", "proxy", "noise"], ["gain"])
    rows = [[label, *[c for n in noises for c in (_cells(raw, l, p, n, "gain"), _cells(lc, l, p, n, "gain"),
                                                   _cells(raw, l, p, n, "length_correlation"))]]
            for label, l, p in _reward_rows(both.filter(pl.col("variant") == "pool"))]
    rows.append(["random pick (expected)", *["0 (by definition)", "0 (by definition)", "-"] * len(noises)])
    header = ["reward · aggregation"] + [f"{h} ({n})" for n in noises for h in
                                         ("gain", "gain, length-controlled gold", "Spearman with length")]
    return md_table(header, rows)


def peaks(bon: pl.DataFrame) -> pl.DataFrame:
    """Per run and proxy of a bon_summary table: where its gold curve peaks (peak_n), its gold and gain there, and
    the drop from the peak to n = N (drop_gold, drop: peak − n = N, >= 0; positive when gold falls past the peak).

    `gold_at_best_n` is the curve's maximum over n < N, where the curve at n averages the prompts whose pools hold n
    answers, while `gold` at n = N is every prompt's whole-pool pick. A maximum below that n = N value is no peak:
    the peak is then n = N itself (drop 0), so that the peak never reads below the gold it is said to fall to."""
    norm = (pl.col("oracle") - pl.col("random"))
    falls = (pl.col("best_n") < pl.col("n_max")) & (pl.col("gold_at_best_n") > pl.col("gold"))
    return bon.with_columns(
        peak_n=pl.when(falls).then(pl.col("best_n")).otherwise(pl.col("n_max")),
        peak_gold=pl.when(falls).then(pl.col("gold_at_best_n")).otherwise(pl.col("gold")),
    ).with_columns(peak_gain=(pl.col("peak_gold") - pl.col("random")) / norm,
                   drop_gold=pl.col("peak_gold") - pl.col("gold"),
                   drop=(pl.col("peak_gold") - pl.col("gold")) / norm)


def overoptimisation_markdown(bon: pl.DataFrame, dataset: str, noises: list[str]) -> str:
    """Rows: rewards (baselines left out); per noise: the n where the seeds' curves peak (median; N where a curve
    does not fall, see `peaks`), the gain there and at n = N, and the drop from the peak to n = N (peak − n = N,
    >= 0), each a mean ± 95 % interval over seeds."""
    sub = peaks(bon.filter((pl.col("dataset") == dataset) & (pl.col("variant") == "pool")
                           & ~pl.col("proxy").is_in(BASELINES)))
    stats_ = summarise(sub, ["learner", "proxy", "noise"], ["peak_gain", "gain", "drop"])
    medians = sub.group_by(["learner", "proxy", "noise"]).agg(pl.col("peak_n").median())

    def peak(learner: str, proxy: str, noise: str) -> str:
        hit = medians.filter((pl.col("learner") == learner) & (pl.col("proxy") == proxy) & (pl.col("noise") == noise))
        return "-" if hit.is_empty() else f"{hit['peak_n'][0]:.0f}"

    rows = [[label, *[c for n in noises for c in (peak(l, p, n), _cells(stats_, l, p, n, "peak_gain"),
                                                   _cells(stats_, l, p, n, "gain"), _cells(stats_, l, p, n, "drop"))]]
            for label, l, p in _reward_rows(sub)]
    header = ["reward · aggregation"] + [f"{h} ({n})" for n in noises for h in
                                         ("peak n (median)", "gain at the peak", "gain at n = N",
                                          "drop, peak − n = N")]
    return md_table(header, rows)


def excluded_markdown(bon: pl.DataFrame, dataset: str, variant: str, noises: list[str]) -> str:
    """Rows: rewards; per noise: share of prompts whose top pick is excluded, gain with them in and out of the pool."""
    sub = bon.filter((pl.col("dataset") == dataset) & (pl.col("variant") == variant))
    rates = summarise(sub, ["learner", "proxy", "noise"], ["excluded_pick_rate", "gain"])
    out = summarise(bon.filter((pl.col("dataset") == dataset) & (pl.col("variant") == "pool")),
                    ["learner", "proxy", "noise"], ["gain"])
    what = variant.removeprefix("pool+")
    rows = [[label, *[c for n in noises for c in (_cells(rates, l, p, n, "excluded_pick_rate"),
                                                   _cells(rates, l, p, n, "gain"), _cells(out, l, p, n, "gain"))]]
            for label, l, p in _reward_rows(sub)]
    header = ["reward · aggregation"] + [f"{h} ({n})" for n in noises for h in
                                         (f"{what} picked at n = N", f"gain, {what} in", f"gain, {what} out")]
    return md_table(header, rows)


def fit_markdown(fits: pl.DataFrame, dataset: str) -> str:
    sub = fits.filter(pl.col("dataset") == dataset)
    s = summarise(sub, ["learner", "noise"], ["accuracy", "member_accuracy", "spearman", "length_accuracy",
                                              "label_accuracy", "length_correlation", "length_spearman"])
    lengths = sub["length_accuracy"].drop_nulls().len() > 0  # arrays without texts have no lengths
    rows = [[r["learner"], r["noise"], fmt(r["label_accuracy"], r["label_accuracy_ci"]), fmt(r["accuracy"], r["accuracy_ci"]),
             fmt(r["member_accuracy"], r["member_accuracy_ci"]), fmt(r["spearman"], r["spearman_ci"]),
             *([fmt(r["length_correlation"], r["length_correlation_ci"])] if lengths else [])]
            for r in s.iter_rows(named=True)]
    if lengths:
        base = s.row(0, named=True)
        rows.append(["length (baseline)", "-", "-", fmt(base["length_accuracy"], base["length_accuracy_ci"]), "-",
                     fmt(base["length_spearman"], base["length_spearman_ci"]), "1"])
    rows.append(["random (expected)", "-", "-", "0.500", "-", "-", *(["-"] if lengths else [])])
    return md_table(["learner", "labels", "training labels agreeing with gold", "ensemble-mean accuracy",
                     "mean member accuracy", "per-prompt Spearman with gold",
                     *(["per-prompt Spearman with length"] if lengths else [])], rows)


TEMPERATURE_BOUND = float(np.exp(LOG_T_BOUNDS[1]))  # where embrm.evaluation's temperature search stops


def spread(values) -> str:
    """"median [min, max]" of a positive, heavy-tailed quantity over seeds (3 significant digits), "-" without one:
    a mean ± t-interval of such a quantity (a temperature near the search's bound in one seed) means nothing."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if len(v) == 0:
        return "-"
    def sig(x: float) -> str:
        return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"

    return sig(v[0]) if len(v) == 1 else f"{sig(np.median(v))} [{sig(v.min())}, {sig(v.max())}]"


def calibration_markdown(fits: pl.DataFrame, dataset: str) -> str:
    """ECE, MCE, Brier of the ensemble mean's pairwise probability, and ECE after temperature scaling, per learner
    (mean ± 95 % interval over seeds); the fitted temperature as its median and range over seeds (`spread`)."""
    sub = fits.filter(pl.col("dataset") == dataset)
    metrics = ["ece", "mce", "brier", "calibrated_ece"]
    s = summarise(sub.with_columns(pl.col(m).cast(pl.Float64) for m in metrics), ["learner", "noise"], metrics)
    temps = {(k[0], k[1]): spread(g["temperature"].cast(pl.Float64).to_list())
             for k, g in sub.group_by(["learner", "noise"], maintain_order=True)}
    rows = [[r["learner"], r["noise"], *(fmt(r[m], r[f"{m}_ci"]) for m in metrics),
             temps[(r["learner"], r["noise"])]] for r in s.iter_rows(named=True)]
    return md_table(["learner", "labels", "ECE", "MCE", "Brier", "ECE after temperature scaling",
                     "temperature T, median [min, max] over seeds"], rows)


def conformal_line(fits: pl.DataFrame, dataset: str) -> str:
    """The conformal bound's stated and held-out coverage on a pool (every job of it), or "" without one."""
    failed = fits.filter((pl.col("dataset") == dataset) & pl.col("conformal_error").is_not_null())
    failure = (f"The conformal bound could not be calibrated in {failed.height} jobs (it is left out of their "
               f"tables): {failed['conformal_error'][0]}" if failed.height else "")
    sub = fits.filter((pl.col("dataset") == dataset) & pl.col("conformal_coverage").is_not_null())
    if sub.is_empty():
        return failure
    got = sub["conformal_coverage"].to_numpy()
    target = float(sub["conformal_target"][0])
    # the guarantee is marginal (over calibration draws): the mean over jobs is what must reach the target
    verdict = "holds on average" if got.mean() >= target - 0.01 else "FALLS SHORT of the target on average"
    return (f"Conformal lower bound (aggregation `conformal`): stated coverage {target:.2f}; held-out coverage "
            f"{got.mean():.3f} (min {got.min():.3f}, max {got.max():.3f} over {len(got)} jobs), each prompt judged by "
            f"a bound calibrated on the other half of the held-out prompts: the coverage {verdict}."
            + (" " + failure if failure else ""))


def plot_reliability_study(results: list[JobResult], out: Path, dataset: str, noise: str) -> Path | None:
    """One reliability diagram per pool and annotator: each learner's held-out bins pooled over its seeds."""
    curves = {}
    for r in results:
        if r.dataset == dataset and r.noise == noise and r.metrics.reliability is not None:
            curves.setdefault(r.learner, []).append(r.metrics.reliability.to_dict())
    if not curves:
        return None
    pooled = {name: pooled_reliability(parts) for name, parts in curves.items()}
    return plot_reliability(pooled, out / f"{file_stem(f'reliability_{dataset}_{noise}')}.png",
                            title=f"Reliability of the ensemble mean on {dataset} ({noise}), seeds pooled")


def published_markdown(pub: pl.DataFrame, dataset: str) -> str:
    sub = pub.filter(pl.col("dataset") == dataset)
    rows = []
    for (rm,), g in sub.group_by(["reward_model"], maintain_order=True):
        rows.append([rm, f"{g['n_prompts'].mean():.0f}", fmt(*interval(g["gold"].to_list())),
                     fmt(*interval(g["random"].to_list())), fmt(*interval(g["oracle"].to_list())),
                     fmt(*interval(g["gain"].to_list()))])
    return md_table(["published reward model", "held-out prompts with a scored pick", "gold of pick", "random",
                     "oracle", "gain"], rows)


# ----------------------------------------------------------------------------- plots

def mean_curves(curves: pl.DataFrame, **where) -> pl.DataFrame:
    """Curves averaged over seeds (and over any other remaining grouping) per (agg, n)."""
    f = curves.filter(*[pl.col(k) == v for k, v in where.items()])
    return (f.group_by(["agg", "n"], maintain_order=True)
            .agg(pl.col("kl", "d", "gold", "proxy", "percentile", "random", "oracle", "gain").mean())
            .sort(["agg", "n"], maintain_order=True))


def plot_study(curves: pl.DataFrame, bon: pl.DataFrame, pub: pl.DataFrame, out: Path, learner: str,
               noise: str) -> list[Path]:
    """One gold-vs-KL figure per (dataset, pool variant), for one learner and noise, averaged over seeds."""
    paths = []
    for (dataset, variant), _ in bon.group_by(["dataset", "variant"], maintain_order=True):
        mc = mean_curves(curves, dataset=dataset, variant=variant, learner=learner, noise=noise)
        if mc.is_empty():
            continue
        order = list(dict.fromkeys(bon["proxy"].to_list()))
        mc = mc.with_columns(pl.col("agg").cast(pl.Enum(order))).sort(["agg", "n"]).with_columns(pl.col("agg").cast(str))
        refs = None
        if not pub.is_empty() and dataset in pub["dataset"].to_list():
            refs = {r: float(g["gold"].mean()) for (r,), g in pub.filter(pl.col("dataset") == dataset)
                    .group_by(["reward_model"], maintain_order=True)}
        slug = file_stem(f"bon_{Path(dataset).name}_{variant}_{learner}_{noise}")
        path = out / f"{slug}.png"
        paths.append(plot_bon(mc, path, references=refs,
                              title=f"{dataset} ({variant}), {learner} ensemble, {noise} labels: mean of seeds"))
    return paths + plot_length_control(curves, out, noise) + plot_overoptimisation(curves, bon, out)


def plot_overoptimisation(curves: pl.DataFrame, bon: pl.DataFrame, out: Path,
                          aggregations: tuple[str, ...] = ("mean", "min", "lcb")) -> list[Path]:
    """Per pool without a length-controlled gold (a generated pool) and per noise: the gold of the Best-of-n pick vs
    KL for every learner's mean and conservative aggregations, averaged over seeds: which curves peak and fall."""
    paths = []
    pools = bon.filter(pl.col("variant") == "pool")["dataset"].unique(maintain_order=True).to_list()
    for dataset in [d for d in pools if bon.filter((pl.col("dataset") == d) & (pl.col("variant") == "pool-lc")).is_empty()]:
        f = curves.filter((pl.col("dataset") == dataset) & (pl.col("variant") == "pool") & pl.col("agg").is_in(aggregations))
        for noise in f["noise"].unique(maintain_order=True).to_list():
            lines = [mean_curves(f.filter(pl.col("agg") == a), learner=learner, noise=noise)
                     .with_columns(agg=pl.lit(f"{learner} · {a}"))
                     for learner in f["learner"].unique(maintain_order=True).to_list() for a in aggregations]
            slug = file_stem(f"overoptimisation_{Path(dataset).name}_{noise}")
            paths.append(plot_bon(pl.concat([l for l in lines if not l.is_empty()]), out / f"{slug}.png",
                                  title=f"{dataset}, {noise} labels: gold of the Best-of-n pick, mean of seeds"))
    return paths


def plot_length_control(curves: pl.DataFrame, out: Path, noise: str) -> list[Path]:
    """Per pool with length-controlled learners: the ensemble mean of every learner and the length ruler, judged by
    the length-controlled gold (pool-lc), averaged over seeds: one line per learner."""
    paths = []
    controlled = curves.filter(pl.col("learner").str.contains(".", literal=True)) if not curves.is_empty() else curves
    for dataset in controlled["dataset"].unique(maintain_order=True) if not controlled.is_empty() else []:
        f = curves.filter((pl.col("dataset") == dataset) & (pl.col("variant") == "pool-lc") & (pl.col("noise") == noise))
        if f.is_empty():  # no length-controlled gold on this pool (e.g. lengths that never vary)
            continue
        learners = f["learner"].unique(maintain_order=True).to_list()
        lines = [mean_curves(f.filter(pl.col("agg") == "mean"), learner=l).with_columns(agg=pl.lit(l)) for l in learners]
        lines.append(mean_curves(f.filter(pl.col("agg") == "length"), learner=learners[0]))
        slug = file_stem(f"length_control_{Path(dataset).name}_{noise}")
        paths.append(plot_bon(pl.concat(lines), out / f"{slug}.png",
                              title=f"{dataset}, length-controlled gold, ensemble mean per learner, {noise} labels: "
                                    f"mean of seeds"))
    return paths
