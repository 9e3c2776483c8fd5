"""report.md of a study: findings with their intervals and replication status, the embedders compared (a study
with [[embedders]]), then per pool the Best-of-n tables on gold and on length-controlled gold, reward hacking,
pairwise accuracy, methods, the embedder's window, plots and timing. Every number comes from the study's tables
(embrm.studies._tables) and findings (embrm.studies._findings)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import polars as pl

from embrm.core import fmt, md_table
from embrm.embedding import CHAT, DEFAULT_TEMPLATE
from embrm.evaluation import VERDICTS, LengthEffect
from embrm.methods import render_methods
from embrm.studies import _tables as R
from embrm.studies._config import Study, group_label
from embrm.studies._rl import plot_name, rl_markdown
from embrm.studies._store import TextFacts

SETTING = ("Setting: reward models trained on simulated annotators over the TRAINING prompts of each pool and "
           "evaluated on held-out prompts ({test:.0%} of prompts, split per seed). Best-of-n is the exact unbiased "
           "estimator over each held-out prompt's scored pool; `gold@N` is the gold of each held-out prompt's "
           "top-scored response (n = N, the whole pool), averaged over prompts, and `gain` = (gold − random) / "
           "(oracle − random). Members are standardised on the training responses before aggregating. A dataset's "
           "excluded responses{probes} never label, train or enter the evaluated pool; `pool+<name>` puts them back "
           "and reports how often each reward picks one. `random pick (expected)` is the pool mean, the expected gold "
           "of a uniformly random pick. "
           "Tables show the mean ± 95 % Student-t interval over seeds; findings use intervals over seeds AND "
           "held-out prompts (below).")
LENGTH_CONTROL = ("Length-controlled rewards: `.posthoc` removes each member's within-prompt regression on length "
                  "(fitted on the training responses; cf. arXiv 2409.17407), `.odin` trains a quality head and a "
                  "length head together and scores with the quality head (Chen et al. 2024), `.rrm` adds other "
                  "prompts' answers as losers and ties to the training pairs (Liu et al. 2024). Length-controlled "
                  "gold is the gold with a fitted length term removed: by default AlpacaEval 2's length-controlled "
                  "GLM (Dubois et al. 2024: a quality and a length term per answer source on tanh of the "
                  "standardised length difference to the baseline's answer, and a difficulty per prompt; study key "
                  "length_control_gold = \"alpacaeval\"), or embrm's earlier log-linear fit (gold ~ prompt + answer "
                  "source + effect × log(1 + characters); \"loglinear\"). Each pool's section says which it used.")


OVEROPTIMISATION = ("Over-optimisation: where each seed's gold curve peaks, the gain there and at n = N, and the drop "
                    "from the peak to n = N (peak − n = N: positive when gold falls past the peak, 0 when the curve "
                    "does not fall, the peak n then N). The curve at n averages the prompts whose pools hold n "
                    "answers. The peak is chosen on the same prompts, so the drop is optimistic; the findings "
                    "cross-fit it:")
CALIBRATION = ("Calibration of the ensemble mean's probability sigmoid(r_a − r_b) on the same pairs (ECE, MCE over 10 "
               "confidence bins; Brier; mean ± 95 % interval over seeds), and temperature scaling fitted on the other "
               "half of the held-out prompts: the ECE after it, and the temperature T as its median [min, max] over "
               "seeds (a seed's T is the mean of its two folds'; T > 1: the margins were overconfident, T < 1: "
               "underconfident; near {bound:.0f}, the search's bound, a fold's margins carry no signal to calibrate). "
               "Reliability diagrams under Plots:")


PROBES = {"alpaca-eval-models": "reward-hacking probes NullModel, gpt4_gamed, *_verbose"}  # named in the setting


def _probes(study: Study) -> str:
    """The excluded responses of the study's own datasets that the setting names (none: "")."""
    named = [f"on `{d.label}` its {PROBES[d.label]}" for d in study.datasets if d.label in PROBES]
    return f" ({'; '.join(named)})" if named else ""


def _findings_section(result) -> list[str]:
    if not result.findings:
        return []
    tested = [f for f in result.findings if f.effect is not None]
    seeds = {f.effect.n_seeds for f in tested}
    how = ("crossed random effects of prompts and seeds: the prompt part clustered by prompt (each distinct prompt "
           "counted once, with every seed and run that held it out, since the seeds' held-out prompts overlap), the "
           "seed part the seeds' spread less its prompt part; a Student-t interval with Welch-Satterthwaite degrees "
           "of freedom, wide when few seeds must pin down a seed effect" if seeds != {1} else
           "the prompt-clustered variance of the one seed (seed-to-seed variation is not captured)")
    conclusive = [f for f in tested if f.verdict in VERDICTS[:2]]
    survive = [f for f in conclusive if f.adjusted_verdict == f.verdict]
    q = tested[0].family_q if tested else 0.05
    lines = ["## Findings", "", f"Each effect is a paired difference (per-prompt records of every run) with a 95 % "
             f"interval for the effect on new prompts of the same kind, from {how}. A claim is **reproduced** only "
             "when the interval excludes 0 in the claimed direction, **reversed** only when it excludes 0 the other "
             "way, otherwise not reproduced (inconclusive). p: the two-sided p-value of no effect. Effect size: the "
             "estimate over the standard deviation of the per-prompt differences. The papers' claims are measured "
             "on the plain learners.", "",
             f"The family: these {len(tested)} tested findings, controlled at a false discovery rate of {q:.0%} "
             f"(Benjamini & Hochberg 1995; q: each finding's adjusted p-value). {len(survive)} of the "
             f"{len(conclusive)} conclusive verdicts survive; a verdict that does not is marked and counts as "
             "inconclusive. For each inconclusive finding: the smallest effect its design detects at 80 % power "
             "(two-sided, 5 %) and the seeds (same prompts) or pool prompts (same seeds) that would detect its "
             "observed estimate (`embrm plan` prints these before a run). The replication halves below stay the "
             "independent check.", ""]
    lines += [f"- {f.markdown()}" for f in result.findings] + [""]
    if result.replication is not None:
        agree = sum(r.agreement == "agree" for r in result.replication)
        lines += ["### Replication on two disjoint halves of the prompts", "",
                  f"Every pool job ran again on each of two disjoint halves of the pool's prompts (a fixed seeded "
                  f"split; jobs `<pool>.half1/...`, `.half2/...`), with the same protocols and intervals: "
                  f"{agree} of {len(result.replication)} findings agree (the same verdict, estimates of one sign). "
                  f"A finding reproduced on all prompts but inconclusive on a half lacked the power to show on half "
                  f"the prompts; one that disagrees is not robust.", "",
                  md_table(["finding", "first half", "second half", "agreement"],
                             [[r.finding, f"{r.first} ({r.first_estimate:+.3f})",
                               f"{r.second} ({r.second_estimate:+.3f})", r.agreement]
                              for r in result.replication]), ""]
    return lines


def _sequential_section(result) -> list[str]:
    """The looks of `embrm run --until-decided`: seeds, decided and continuing findings, boundaries, why it stopped."""
    run = getattr(result, "sequential", None)
    if run is None:
        return []
    rows = [[str(k.look), str(k.seeds), str(k.decided), str(k.continuing),
             "–" if k.bound_lo != k.bound_lo else f"{k.bound_lo:.2f}" if k.bound_lo == k.bound_hi
             else f"{k.bound_lo:.2f} – {k.bound_hi:.2f}"] for k in run.looks]
    return ["## Sequential design", "",
            f"Run with `--until-decided --max-seeds {run.max_seeds}`: the findings were looked at after the study's "
            f"seeds and after each batch of {run.batch} new seeds. Stopped: {run.reason}.", "",
            md_table(["look", "seeds", "decided", "continuing", "z boundary"], rows), "",
            "The verdicts above are the group-sequential boundary's, not the plain 95 % interval's: a finding is "
            "reproduced or reversed when |estimate / se| crosses its look's boundary (Lan-DeMets alpha spending, "
            f"O'Brien-Fleming type, {run.alpha:.0%} two-sided over all looks), futile when its conditional power to "
            f"cross by {run.max_seeds} seeds is below {run.futility:.0%}, and keeps the look that decided it. Its "
            "repeated confidence interval is estimate ± bound·se (all looks' intervals cover together with "
            f"{1 - run.alpha:.0%} probability); the estimates above are at the final seeds.", ""]


def _length_effect_line(effect: LengthEffect | str | None) -> str:
    """The fit behind a pool's length-controlled gold, or why it has none (a str); with named answer sources, how
    raw, log-linear and AlpacaEval-style gold rank them."""
    if not effect:
        return ""
    if isinstance(effect, str):
        return f"No length-controlled gold for this pool: {effect}"
    source = f" and answer source (`{effect.source}`)" if effect.source else ""
    loglinear = ""
    if effect.effect is not None:
        interval = f" ± {1.96 * effect.stderr:.3f}" if effect.stderr is not None else ""
        r2 = f"; within-prompt R² {effect.r2_within:.2f}" if effect.r2_within is not None else ""
        loglinear = (f"Fitted length effect (log-linear): gold changes by {effect.effect:+.3f}{interval} per unit "
                     f"of log(1 + characters), holding the prompt{source} fixed{r2}")
    if effect.gold == "loglinear":
        line = (f"Length-controlled gold (pool-lc): log-linear. {loglinear} ({effect.n_rows} responses, "
                f"{effect.n_prompts} prompts); it removes this term." + (f" {effect.description}."
                                                                         if effect.description else ""))
    else:
        line = (f"Length-controlled gold (pool-lc): AlpacaEval 2's length-controlled GLM (Dubois et al. 2024), each "
                f"answer's fitted length effect removed ({effect.n_rows} responses, {effect.n_prompts} prompts; "
                f"shared length term {effect.phi_shared:+.2f} per unit of tanh(standardised length difference); "
                f"baseline length: {effect.baseline})." + (f" For comparison: {loglinear}." if loglinear else ""))
    rank = effect.ranking
    if not rank:
        return line
    rho, top = rank["spearman"], rank["top"]
    rows = [["raw gold", "1", f"{rho['raw~loglinear']:.3f}", f"{rho['raw~alpacaeval']:.3f}", ", ".join(top["raw"])],
            ["log-linear LC gold", "", "1", f"{rho['loglinear~alpacaeval']:.3f}", ", ".join(top["loglinear"])],
            ["AlpacaEval-style LC gold", "", "", "1", ", ".join(top["alpacaeval"])]]
    return "\n".join([line, "", f"How each gold ranks the {rank['n_sources']} answer sources (Spearman between "
                       f"their mean gold; top three):", "",
                       md_table(["gold", "vs raw", "vs log-linear", "vs AlpacaEval-style", "top three"], rows)])


def _pool_sections(result, noises: list[str]) -> list[str]:
    bon, pub = result.bon, result.published
    lines = []
    for dataset in bon["dataset"].unique(maintain_order=True):
        variants = bon.filter(pl.col("dataset") == dataset)["variant"].unique(maintain_order=True).to_list()
        if "pool-lc" in variants:
            lines += [f"## Best-of-n on `{dataset}`: gold and length-controlled gold", "",
                      _length_effect_line(result.length_effects.get(dataset)), "",
                      R.length_markdown(bon, dataset, noises), ""]
        else:
            lines += [f"## Best-of-n on `{dataset}`", "", _length_effect_line(result.length_effects.get(dataset)), ""]
        coverage = R.conformal_line(result.fits, dataset)
        lines += ["Gold@N and gain on gold, per aggregation:", "", R.bon_markdown(bon, dataset, "pool", noises), "",
                  *([coverage, ""] if coverage else []),
                  OVEROPTIMISATION, "",
                  R.overoptimisation_markdown(bon, dataset, noises), ""]
        for variant in (v for v in variants if v.startswith("pool+")):
            what = variant.removeprefix("pool+")
            lines += [f"### Reward hacking on `{dataset}`: the {what}", "",
                      f"The {what} may game the judge that produced gold, so a pick of theirs can inflate gold: share "
                      f"of held-out prompts whose top-scored answer (n = N) is one of the {what}, and the gain with "
                      f"them in and out of the pool.", "", R.excluded_markdown(bon, dataset, variant, noises), ""]
        if not pub.is_empty() and dataset in pub["dataset"].to_list():
            lines += ["Published reward models' best-of-16 picks on the same held-out prompts (not trained on this "
                      "pool: a different, harder setting):", "", R.published_markdown(pub, dataset), ""]
    return lines


def _rl_sections(study: Study, result) -> list[str]:
    """Per pool and policy of the study's [rl] table: the runs' seed means and the plot (the findings are above)."""
    if result.rl.is_empty() and not result.rl_skipped:
        return []
    lines = []
    for dataset, policy in result.rl.select("dataset", "policy").unique(maintain_order=True).iter_rows():
        c = study.rl.config_of(policy)
        lines += [f"## Reinforcement learning on `{dataset}` ({policy} policy)", "",
                  RL.format(algo=c.algo, steps=c.steps, group=c.group, lr=c.lr, kl_mode=c.kl_mode,
                            policy=RL_POLICY[policy]), "",
                  rl_markdown(result.rl, dataset, policy), "", f"![RL on {dataset}]({plot_name(dataset, policy)})", ""]
    lines += [f"RL on `{where}`: {why}." for where, why in result.rl_skipped.items()]
    return lines + ([""] if result.rl_skipped else [])


def _embedding_section(embedding: dict[str, TextFacts]) -> list[str]:
    """What the embedder's window did to the texts: a result built on responses it never saw must say so."""
    if not embedding:
        return []
    rows = [[f"`{name}`", str(f.n_texts), str(f.n_truncated), str(f.n_response_cut), str(len(f.indistinguishable))]
            for name, f in embedding.items()]
    lines = ["## What the embedder saw", "", "Texts longer than the embedder's window lose the prompt's start first; "
             "a response longer than the window (with a quarter of it kept for the prompt's end) loses its end. "
             "Prompts whose different responses still got identical vectors cannot be ranked by any reward.", "",
             md_table(["dataset", "texts", "cut to the window", "response lost tokens",
                         "prompts with indistinguishable responses"], rows), ""]
    tied = {name: f.indistinguishable for name, f in embedding.items() if f.indistinguishable}
    lines += [f"- `{name}`: indistinguishable responses on prompt(s) {', '.join(ids[:10])}"
              f"{' ...' if len(ids) > 10 else ''}" for name, ids in tied.items()]
    return lines + ([""] if tied else [])


DESCRIBED = ("backend", "model", "layer", "pooling", "max_length", "dtype", "template")
HEADLINE = ("accuracy", "gold", "gain", "length_correlation")


def _describe(config, spec: dict | None) -> dict:
    """What made the vectors: the cache spec (the embedder's own, as resolved), else the study's options."""
    source = spec or {**asdict(config), "model": config.model or "default"}
    return {k: source.get(k) for k in DESCRIBED}


def _metrics(fits: pl.DataFrame, bon: pl.DataFrame) -> dict:
    """The ensemble mean's held-out accuracy and within-prompt Spearman with length (fits) and its Best-of-n pick
    at n = N on the pool (bon: gold@N, gain), each averaged over the grid within a seed, then over seeds."""
    mean = bon.filter((pl.col("variant") == "pool") & (pl.col("proxy") == "mean")) if bon.height else bon
    out = {}
    for metric in HEADLINE:
        out[metric], out[f"{metric}_ci"] = R.grid_mean(mean if metric in ("gold", "gain") else fits, metric)
    return out


def embedder_rows(study: Study, specs: dict, fits: pl.DataFrame, bon: pl.DataFrame) -> list[dict]:
    """Per dataset and embedder (in the study's order): its description and headline metrics (`_metrics`), also
    per learner (averaged over annotators and seeds). JSON-able (embedders.json); NaN (no such metric) is None."""
    rows = []
    for spec in [*study.datasets, *study.human_pairs]:
        for name in study.embedder_names:
            group = group_label(spec.label, name)
            f = fits.filter(pl.col("dataset") == group) if fits.height else fits
            b = bon.filter(pl.col("dataset") == group) if bon.height else bon
            learners = f["learner"].unique(maintain_order=True).to_list() if f.height else []
            per_learner = {l: _metrics(f.filter(pl.col("learner") == l),
                                       b.filter(pl.col("learner") == l) if b.height else b) for l in learners}
            rows.append(_json_safe({"dataset": spec.label, "embedder": name, "group": group,
                                    "description": _describe(study.embedder_of(name), specs.get(name)),
                                    "n_jobs": f.height, "n_seeds": f["seed"].n_unique() if f.height else 0,
                                    **_metrics(f, b), "per_learner": per_learner}))
    return rows


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return None if isinstance(value, float) and value != value else value


def _cell(row: dict, metric: str) -> str:
    mean, half = row.get(metric), row.get(f"{metric}_ci")
    return fmt(float("nan") if mean is None else mean, float("nan") if half is None else half)


def _description_cells(d: dict) -> list[str]:
    template = json.dumps(d["template"])[1:-1].replace("|", "\\|") if d.get("template") else "-"
    return [f"{d['backend']}:{d['model']}", "-" if d.get("layer") is None else str(d["layer"]),
            str(d.get("pooling") or "-"), str(d.get("max_length") or "-"), f"`{template}`"]


def _embedders_section(rows: list[dict]) -> list[str]:
    """One row per dataset and embedder: what made the vectors and what the rewards on them did."""
    if not rows:
        return []
    lines = ["## Embedders", "", EMBEDDERS, "",
             md_table(["dataset", "embedder", "backend:model", "layer", "pooling", "max tokens", "template",
                         "held-out accuracy", "gold@N", "gain", "Spearman with length"],
                        [[f"`{r['dataset']}`", f"`{r['embedder']}`", *_description_cells(r["description"]),
                          *(_cell(r, m) for m in HEADLINE)] for r in rows]), ""]
    learners = list(dict.fromkeys(l for r in rows for l in r["per_learner"]))
    cells = [[f"`{r['dataset']}`", f"`{r['embedder']}`", *(_accuracy_gain(r["per_learner"].get(l)) for l in learners)]
             for r in rows]
    lines += ["Per learner (held-out accuracy / gain, each averaged over annotators and seeds):", "",
              md_table(["dataset", "embedder", *learners], cells), ""]
    return lines


def _accuracy_gain(m: dict | None) -> str:
    return " / ".join("-" if m is None or m.get(k) is None else f"{m[k]:.3f}" for k in ("accuracy", "gain"))


EMBEDDERS = ("Every job ran once per embedder on the same prompts, train/test splits and simulated labels; the "
             "datasets' own sections below are headed `<dataset>@<embedder>`. Each row averages the ensemble "
             "mean's results over the study's learners and annotators within a seed, then gives the mean ± 95 % "
             "Student-t interval over seeds. Held-out accuracy: pairwise accuracy on the held-out prompts (against "
             "the gold order on pools, the human labels on pairs). gold@N and gain: the ensemble mean's Best-of-n "
             "pick at n = N (the whole pool), gain = (gold − random) / (oracle − random), as in the Best-of-n "
             "tables. Spearman with length: the ensemble mean's within-prompt Spearman correlation with response "
             "length on held-out responses (0: blind to length). The description is the embedder's cache spec: "
             "what made the vectors.")


def _timing_section(result) -> list[str]:
    t, fits = result.timings, result.fits
    rows = [["embedding (cached texts are free)", f"{t.embed_total:.1f}"],
            [f"{t.n_jobs} jobs + {t.n_replication_jobs} replication jobs on {t.workers} {t.runner} workers, the "
             f"methods beside them (wall; jobs already done in this directory are loaded, not run again)",
             f"{t.jobs_wall:.1f}"],
            *[[f"method: {k} (within the wall above)", f"{v:.1f}"] for k, v in t.methods.items()],
            ["tables, findings, plots and report", f"{t.products:.1f}"],
            ["total", f"{t.total:.1f}"]]
    per_learner = fits.group_by("learner", maintain_order=True).agg(pl.col("seconds").mean().alias("s"),
                                                                     pl.col("seconds").sum().alias("sum"))
    return ["## Timing", "", md_table(["stage", "seconds"], rows), "",
            md_table(["learner", "mean seconds per job (fit + evaluation; a member fit shared with another learner, "
                      "as mlp.posthoc shares mlp's, counts where it ran)", "seconds, all its jobs of this table"],
                     [[r["learner"], f"{r['s']:.1f}", f"{r['sum']:.0f}"] for r in per_learner.iter_rows(named=True)]),
            ""]


def render_report(study: Study, result, plots: list[Path], command: str | None) -> str:
    fits = result.fits
    noises = [n.name for n in study.noise]
    generated = {name: f.generated for name, f in result.embedding.items() if f.generated}
    budgets = sorted({n.n_pairs or study.labels["n_pairs"] for n in study.noise})
    lines = [f"# embrm study `{study.name}`", "",
             f"Command: `{command or 'embrm run'}` · seeds {study.seeds} · K = {study.k} members"
             f"{' (unless a learner names its own, .k<K>)' if any(l.k for l in study.learners) else ''} · "
             f"embedder {_embedder_text(study, generated)} · {' / '.join(map(str, budgets))} simulated pairs per "
             f"job.", "", SETTING.format(test=study.test_size, probes=_probes(study)), ""]
    lines += [f"Generated data `{name}`: {source}. Its embeddings come with it; the gold is known exactly." for
              name, source in generated.items()] + ([""] if generated else [])
    if any(not l.length_control == "none" for l in study.learners):
        lines += [LENGTH_CONTROL, ""]
    lines += _findings_section(result)
    lines += _sequential_section(result)
    if study.embedders:
        lines += _embedders_section(result.embedders)
    if not result.bon.is_empty():
        lines += _pool_sections(result, noises)
    lines += _rl_sections(study, result)
    for dataset in fits["dataset"].unique(maintain_order=True):
        against = fits.filter(pl.col("dataset") == dataset)["against"][0]
        lines += [f"## Pairwise accuracy on `{dataset}` (held-out, against the {against})", "",
                  R.fit_markdown(fits, dataset), "",
                  CALIBRATION.format(bound=R.TEMPERATURE_BOUND), "", R.calibration_markdown(fits, dataset), ""]
    for dataset in ([] if result.sun.is_empty() else result.sun["dataset"].unique(maintain_order=True)):
        lines += [f"## Sun et al.'s numbers on `{dataset}`", "", SUN, "", R.sun_markdown(result.sun, dataset), ""]
    if result.methods:
        lines += [render_methods(result.methods), ""]
    if result.active:
        lines += ["## Active labelling (which pairs to label next)", "", ACTIVE, ""]
        for a in result.active:
            lines += [a.markdown(), f"![active labelling on {a.dataset}](active/{a.dataset}/active.png)", ""]
    lines += _embedding_section({k: v for k, v in result.embedding.items() if not v.generated})
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines + _timing_section(result))


RL = ("Online RL against each job's fitted reward on its held-out prompts ({algo}, {steps} steps, G = {group} "
      "samples per prompt a step, Adam lr {lr:g}, KL to the reference in the {kl_mode}); {policy} Per run: the "
      "expected gold at step 0 (the reference policy), at its peak and at the end, the exact KL at the end, and "
      "Best-of-n's gold at n = N of the same aggregation on the same prompts (mean ± 95 % interval over seeds). The "
      "peak is chosen on the same prompts here; the findings cross-fit it.")
RL_POLICY = {"pool": "the policy is a softmax over each prompt's pool (exact expectations).",
             "linear": "the policy is a softmax over each pool with one linear theta over the embeddings, trained on "
                       "half of the held-out prompts and measured on the other half (exact expectations).",
             "gaussian": "the policy is a Gaussian in the embedding space around each prompt's base-policy mean; "
                         "its samples are NEW candidates, their gold the generator's (Monte-Carlo means)."}


SUN = ("As Sun et al. (2025) report them, for the raw ensemble mean, min and first member: pairwise accuracy and "
       "per-prompt Spearman on the held-out prompts, and Best-of-N by ONE random subsample of N responses per prompt "
       "(its gold, and its quantile among the prompt's whole pool). A random draw, unlike the exact curves above; "
       "every N in sun_metrics.parquet.")


ACTIVE = ("Each strategy starts from the same random seed set, then picks a batch of within-prompt pairs (across "
          "prompts where asked) of the training prompts each round; the simulated annotator labels them (one draw "
          "per pair, the same under every strategy), a Bayesian linear BT head (Laplace) is refitted, and the "
          "held-out prompts measure it. A strategy beats random when its 95 % interval over seeds and held-out "
          "prompts lies above zero.")


def _embedder_text(study: Study, generated: dict) -> str:
    if study.embedders:
        return f"{len(study.embedders)} embedders ({', '.join(f'`{n}`' for n in study.embedders)}: see Embedders)"
    e = study.embedder
    precision = e.build().precision() if e.backend in ("st", "hf") else ""  # what dtype "auto" chose here, and why
    text = f"{e.backend}:{e.model or 'all-MiniLM-L6-v2 (packaged)'} ({precision or e.dtype})"
    if e.backend == "imported":  # where the vectors came from, as `embrm import` recorded it
        o = e.build().spec()
        text = (f"imported: {o['model']} layer {o['layer']} pooling {o['pooling']}, {o['dim']}-d, from "
                f"`{o['file']}` (sha256 {o['sha256'][:12]})")
    if e.template != DEFAULT_TEMPLATE:
        text += " · template " + ("chat (the model's own chat rendering)" if e.template == CHAT else
                                  f"`{json.dumps(e.template)[1:-1]}`")
    if len(generated) == len(study.datasets) + len(study.human_pairs):
        return "none (generated data carry their own vectors)"
    return text + (" (generated data carry their own vectors)" if generated else "")
