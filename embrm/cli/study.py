"""`embrm run`: a whole study (embed, every job through embrm.pipeline._steps, methods, report)."""

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
from embrm.core import EmbrmError
from embrm.studies import load_study, run_study


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
):
    """Run a whole study: embed (cached), fit every (dataset, noise, learner, seed), Best-of-n, report.md + plots.

    Re-running resumes: finished jobs are kept. Example: embrm run            (the default study on the real pools)
             embrm run studies/smollm2.toml --runner ray
    """
    runner = _runner(runner, backend)
    study = load_study(config)
    out_dir = out_dir or Path("results") / study.name  # the name is a plain name: this stays under results/
    result = run_study(study, out_dir, cache_dir=cache_dir, data_dir=data_dir, workers=workers, runner=runner,
                       address=address, progress=None if format == Format.text else False, command=command_line(ctx),
                       replicate=replicate, overwrite=overwrite)
    if format == Format.json:
        return print_json({"out_dir": str(out_dir), "findings": [f.to_dict() for f in result.findings],
                           "replication": result.replication and [r.to_dict() for r in result.replication],
                           "timings": result.timings.to_dict()})
    print_markdown("\n".join(f"- {f.markdown()}" for f in result.findings))
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
