"""`embrm run`: a whole study (embed, every job through embrm.pipeline._steps, methods, report); `embrm plan`: its
design and power before it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from embrm.cli.common import (
    CacheDirOpt,
    Format,
    FormatOpt,
    command_line,
    err,
    friendly,
    out,
    print_json,
    print_markdown,
)
from embrm.core import EmbrmError, md_table
from embrm.studies import StudyPlan, load_study, plan_study, run_study


@friendly
def run(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Argument(
        help="A study TOML file (default: the default study; keys documented in embrm.studies._config).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Results directory (default: results/<study name>).")] = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", "-j", help="Parallel jobs, 1..1024 (default: the cores, at most 8).")] = None,
    runner: Annotated[str, typer.Option("--runner", help="local (worker processes) | ray.")] = "local",
    backend: Annotated[Optional[str], typer.Option(
        "--backend", hidden=True, help="Deprecated name of --runner (--backend names the embedder elsewhere).")] = None,
    address: Annotated[Optional[str], typer.Option(
        "--address", help="ray: cluster address (default: start a local Ray).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Where named datasets live.")] = None,
    cache_dir: CacheDirOpt = Path("cache"), format: FormatOpt = Format.text,
    replicate: Annotated[Optional[bool], typer.Option(
        "--replicate/--no-replicate", help="Also run the study on two disjoint halves of every dataset's prompts and "
                                           "report which findings agree (default: the study's `replicate`).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace another study's results at --out (without it they are refused; the same "
                            "study's are resumed).")] = False,
    until_decided: Annotated[bool, typer.Option(
        "--until-decided", help="After the study's seeds, add batches of as many new seeds until every finding "
                                "crosses its group-sequential boundary or is futile (needs --max-seeds).")] = False,
    max_seeds: Annotated[Optional[int], typer.Option(
        "--max-seeds", help="With --until-decided: the most seeds to run (more than the study's).")] = None,
):
    """Run a whole study: embed (cached), fit every (dataset, noise, learner, seed), Best-of-n, report.md + plots.

    Re-running resumes: finished jobs are kept. Example: embrm run            (the default study on the real pools)
             embrm run studies/smollm2.toml --runner ray
             embrm run --until-decided --max-seeds 12
    """
    runner = _runner(runner, backend)
    if until_decided != (max_seeds is not None):
        raise EmbrmError("--until-decided and --max-seeds go together: give both (e.g. --until-decided --max-seeds 12) "
                         "or neither")
    study = load_study(config)
    out_dir = out_dir or Path("results") / study.name  # the name is a plain name: this stays under results/
    result = run_study(study, out_dir, cache_dir=cache_dir, data_dir=data_dir, workers=workers, runner=runner,
                       address=address, progress=None if format == Format.text else False, command=command_line(ctx),
                       replicate=replicate, overwrite=overwrite, until_decided=until_decided, max_seeds=max_seeds)
    sequential = result.sequential and result.sequential.to_dict()
    if format == Format.json:
        return print_json({"out_dir": str(out_dir), "findings": [f.to_dict() for f in result.findings],
                           "replication": result.replication and [r.to_dict() for r in result.replication],
                           "timings": result.timings.to_dict(), "sequential": sequential})
    print_markdown("\n".join(f"- {f.markdown()}" for f in result.findings))
    if sequential:
        out.print(f"sequential: {len(sequential['looks'])} look(s); stopped: {sequential['reason']}", markup=False)
    out.print(f"report -> {result.report_path}  ({result.timings.total:.0f}s)")


def _runner(runner: str, backend: str | None) -> str:
    """--runner, or the deprecated `embrm run --backend local|ray` it replaces (one warning line)."""
    if backend is None:
        return runner
    if runner != "local" and runner != backend:
        raise EmbrmError(f"--backend {backend} and --runner {runner}: --backend is the old name of --runner: give "
                         f"--runner alone")
    err.print(f"warning: `embrm run --backend {backend}` is deprecated: use --runner {backend}", markup=False,
              highlight=False, soft_wrap=True)
    return backend


@friendly
def plan(
    config: Annotated[Optional[Path], typer.Argument(
        help="A study TOML file (default: the default study).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="The study's results directory, read for its findings.json (default: results/<study "
                            "name>); nothing is written.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Where named datasets live.")] = None,
    format: FormatOpt = Format.text,
):
    """Before running: the study's design (prompts, held-out prompts per seed, seeds, jobs), the effect it can
    detect, and, after a run, each finding's minimum detectable effect and the seeds or prompts it needs.

    Example: embrm plan            (the default study, its findings in results/default)
    """
    study = load_study(config)
    plan_ = plan_study(study, out_dir or Path("results") / study.name, data_dir)
    if format == Format.json:
        return print_json(plan_.to_dict())
    print_markdown(_plan_markdown(plan_))


def _plan_markdown(p: StudyPlan) -> str:
    pct = f"{p.power:.0%} power, two-sided {p.alpha:.0%}"
    lines = [f"# Plan of study `{p.study}`", "",
             f"{p.seeds} seeds · test_size {p.test_size:g} · {p.jobs} jobs + {p.replication_jobs} replication jobs", "",
             md_table(["dataset", "kind", "prompts", "held out per seed", "jobs", "replication jobs", "MDE (d)"],
                      [[f"`{d.label}`", d.kind, f"{d.prompts:,}", f"{d.held_out:,}", str(d.jobs),
                        str(d.replication_jobs), f"{d.mde:.3f}"] for d in p.datasets]), "",
             f"MDE (d): the smallest effect detected at {pct}, in per-prompt standard deviations, for a finding whose "
             "variance is all prompt variance: d = (z_0.975 + z_0.8) sqrt((1 - f) / (S m) + 1 / P) (P prompts, m held "
             "out by each of S seeds, f = m / P); seed variation only adds to it.", ""]
    if p.findings is None:
        return "\n".join(lines + [p.note])
    lines += [f"## Findings of the last run ({p.findings_path})", "",
              md_table(["finding", "estimate", "verdict", "q", "MDE", "seeds needed", "prompts needed"],
                       [[f.key.replace("|", " · "), f"{f.estimate:+.3f}", f.verdict, _num(f.q_value, "{:.3f}"), _num(f.mde, "{:.3f}"),
                         _num(f.seeds_needed, "{}"), _num(f.prompts_needed, "{:,}")] for f in p.findings]), "",
              f"MDE: the smallest |effect| the finding's design detects at {pct}; seeds needed (same prompts) and "
              "prompts needed (same seeds) would detect its observed estimate (– : none would, or unknown)."]
    return "\n".join(lines + ([p.note] if p.note else []))


def _num(value, spec: str) -> str:
    return "–" if value is None or value != value else spec.format(value)
