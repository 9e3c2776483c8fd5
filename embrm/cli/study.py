"""`embrm run`: a whole study (embed, every job through embrm.pipeline._steps, methods, report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markdown import Markdown

from embrm.cli.common import CacheDirOpt, Format, FormatOpt, command_line, friendly, out, print_json
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
    backend: Annotated[str, typer.Option("--backend", help="local (worker processes) | ray.")] = "local",
    address: Annotated[Optional[str], typer.Option(
        "--address", help="ray: cluster address (default: start a local Ray).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Where named datasets live.")] = None,
    cache_dir: CacheDirOpt = Path("cache"), format: FormatOpt = Format.text,
    replicate: Annotated[Optional[bool], typer.Option(
        "--replicate/--no-replicate", help="Also run the study on two disjoint halves of every dataset's prompts and "
                                           "report which findings agree (default: the study's `replicate`).")] = None,
):
    """Run a whole study: embed (cached), fit every (dataset, noise, learner, seed), Best-of-n, report.md + plots.

    Re-running resumes: finished jobs are kept. Example: embrm run            (the default study on the real pools)
             embrm run studies/smollm2.toml --backend ray
    """
    study = load_study(config)
    out_dir = out_dir or Path("results") / study.name  # the name is a plain name: this stays under results/
    result = run_study(study, out_dir, cache_dir=cache_dir, data_dir=data_dir, workers=workers, backend=backend,
                       address=address, progress=None if format == Format.text else False, command=command_line(ctx),
                       replicate=replicate)
    if format == Format.json:
        return print_json({"out_dir": str(out_dir), "findings": [f.to_dict() for f in result.findings],
                           "replication": result.replication, "timings": result.timings})
    out.print(Markdown("\n".join(f"- {f.markdown()}" for f in result.findings)))
    out.print(f"report -> {result.report_path}  ({result.timings['total']:.0f}s)")
