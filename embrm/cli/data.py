"""Commands over data and the embedding cache: `datasets`, `embed`, `cache info`, `cache verify`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Column, Table

from embrm.cli.common import (
    EMBED_OPTION,
    CacheDirOpt,
    DataOptions,
    DatasetArg,
    EmbedderOptions,
    Format,
    FormatOpt,
    err,
    friendly,
    grouped,
    options_named,
    out,
    print_json,
)
from embrm.core import EmbrmError
from embrm.data import GENERATORS, REGISTRY, existing_data_dir
from embrm.embedding import EmbeddingCache, EmbedRoute, cache_dirs, verify
from embrm.embedding import leftovers as find_leftovers
from embrm.embedding import repair as repair_cache

CachePathArg = Annotated[Path, typer.Argument(help="Cache root or one embedder's cache directory.")]


@friendly
def datasets(data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Where named datasets live.")] = None,
             format: FormatOpt = Format.text):
    """List the named datasets as declared (columns, exclusion rule, attachments), their sources and whether they
    are present locally.

    Example: embrm datasets --data-dir ../shared/data
    """
    root = existing_data_dir(data_dir)
    rows = [_declared(info, root) for info in REGISTRY.values()]
    rows += [dict(name=name, kind="generated", present=True, path=None, description=g.description,
                  source=g.make.__module__, columns=None, excluded=None, exclude=None, answer_source=None,
                  attachments=[]) for name, g in GENERATORS.items()]
    if format == Format.json:
        return print_json(rows)
    table = Table("name", "kind", "present", "columns", "excluded", "attachments", "description",
                  title=f"datasets in {root}")
    for r in rows:
        columns = ", ".join(f"{role}={column or '-'}" for role, column in (r["columns"] or {}).items())
        attached = ", ".join(f"{a['name']} ({'present' if a['present'] else 'missing'})" for a in r["attachments"])
        table.add_row(r["name"], r["kind"], "yes" if r["present"] else "no", columns or "-", r["excluded"] or "-",
                      attached or "-", r["description"])
    out.print(table)


def _declared(info, root: Path) -> dict:
    """A registered dataset's declaration as the loader reads it: its columns (role -> column), exclusion rule and
    attachments, with where they are and whether they are present."""
    rule = info.exclude
    return dict(name=info.name, kind=info.kind, present=(root / info.path).exists(), path=str(root / info.path),
                description=info.description, source=info.source,
                columns={option.removesuffix("_col"): column for option, column in info.columns.items()},
                excluded=None if rule is None else f"{rule.name}: {rule.column} ~ {rule.pattern}",
                exclude=None if rule is None else dict(name=rule.name, column=rule.column, pattern=rule.pattern),
                answer_source=info.answer_source,
                attachments=[dict(name=name, path=str(root / a.path), present=(root / a.path).exists(),
                                  source=a.source) for name, a in info.attachments])


@friendly
@grouped(data=DataOptions, embedder=EmbedderOptions)
def embed(dataset: DatasetArg, data: DataOptions, embedder: EmbedderOptions, cache_dir: CacheDirOpt = Path("cache"),
          shard: Annotated[Optional[str], typer.Option(
              "--shard", help="I/N: embed only shard I of N (1-based) into the shared cache; run N of them, in any "
                              "order, anywhere that sees --cache-dir; the last to finish merges.")] = None,
          runner: Annotated[str, typer.Option(
              "--runner", help="local (this process) | ray (one shard per Ray worker, one GPU each if the "
                               "cluster has GPUs).")] = "local",
          workers: Annotated[Optional[int], typer.Option(
              "--workers", "-j", help="ray: shards/workers (default: the cluster's GPUs, else its CPUs).")] = None,
          address: Annotated[Optional[str], typer.Option(
              "--address", help="ray: cluster address (default: start a local Ray).")] = None,
          views: Annotated[Optional[str], typer.Option(
              "--views", help="hf: LAYER:POOLING,... (e.g. '-1:last,10:last,20:max'): one forward pass fills one "
                              "cache per view (instead of --layer/--pooling).")] = None,
          format: FormatOpt = Format.text):
    """Embed a dataset's (prompt, response) texts into the content-addressed Parquet cache (resumable).

    Example: embrm embed alpaca-eval-bon16                      (packaged MiniLM, offline)
             embrm embed my-pool.toml --backend hf --model smollm2 --dtype bfloat16
             embrm embed my-pool.toml --backend hf --model smollm2 --shard 2/4        (one of four processes)
             embrm embed my-pool.toml --backend hf --model smollm2 --runner ray --address auto
    """
    with options_named(EMBED_OPTION):
        # checked before the data is read; --views '' is a (bad) value, not the absence of one
        route = EmbedRoute(runner, shard, workers, address, () if views is None else views)
        ds = data.load(dataset)
        if ds.vectors is not None:  # a generated pool or an array dataset: its vectors are the data
            if format == Format.json:
                return print_json({"dataset": ds.name, "embedded": 0, "carried": len(ds.responses)})
            return out.print(f"{ds!r}\nnothing to embed: {ds.name} comes with its own vectors ({ds.vectors.shape[1]}-d"
                             f"{', read from its array files' if not ds.texts else ''}); fit, bon-sim and studies use "
                             f"them as they are", markup=False, highlight=False)
        outcomes = route.embed(ds, embedder.config(), cache_dir, progress=None if format == Format.text else False)
    if route.views:
        return _print_views(ds, route.views, outcomes, format)
    if outcomes[0].result is None:
        return _shard_pending(ds, outcomes[0], format)
    result = outcomes[0].result
    if format == Format.json:
        return print_json({"dataset": ds.name, **result.summary()})
    out.print(f"{ds!r}\nembedded {result.n_embedded} new texts, {result.n_cached} from cache "
              f"({result.n_texts} rows, {result.dim}-d) in {result.seconds:.1f}s -> {result.cache_dir}\n"
              f"{result.n_truncated} texts cut to the embedder's window (prompt's start first), "
              f"{result.n_response_cut} of them losing response tokens\nprecision: {result.precision}", markup=False,
              highlight=False)
    for line in result.warnings():
        err.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)


def _print_views(ds, views: tuple, outcomes: list, format: Format) -> None:
    if format == Format.json:
        return print_json([{"dataset": ds.name, "layer": layer, "pooling": pooling, **o.summary()}
                           for (layer, pooling), o in zip(views, outcomes)])
    first = outcomes[0]
    out.print(f"{ds!r}\nembedded {first.n_embedded} new texts in {first.seconds:.1f}s, one forward pass for "
              f"{len(views)} views:", markup=False, highlight=False)
    for (layer, pooling), o in zip(views, outcomes):
        state = "complete" if o.result is not None else f"{o.n_missing} texts of other shards missing"
        out.print(f"  layer {layer:>3} {pooling:<14} -> {o.cache_dir} ({state})", markup=False, highlight=False)


def _shard_pending(ds, outcome, format: Format) -> None:
    if format == Format.json:
        return print_json({"dataset": ds.name, **outcome.summary()})
    out.print(f"shard {outcome.shard} of {ds.name}: embedded {outcome.n_embedded} texts in {outcome.seconds:.1f}s "
              f"-> {outcome.cache_dir}\n{outcome.n_missing} texts of the other shards are not cached yet: the last "
              f"shard to finish merges the cache", markup=False, highlight=False)


@friendly
def cache_info(path: CachePathArg = Path("cache"), format: FormatOpt = Format.text):
    """Show each embedder's cache: model, dim, vectors, parts, size, truncated texts, leftovers.

    Example: embrm cache info cache/
    """
    infos = [_info(d) for d in cache_dirs(path)]
    if format == Format.json:
        return print_json([i if isinstance(i, dict) else i.__dict__ for i in infos])
    table = Table("dim", "vectors", "parts", "MB", "cut (response)", "leftovers", title=f"embedding caches in {path}")
    table.columns.insert(0, Column("directory", overflow="fold"))
    for i in infos:
        if isinstance(i, dict):
            table.add_row(Path(i["path"]).name, "-", "-", "-", "-", "-", "-")
            err.print(f"bad: {i['error']}", markup=False, highlight=False, soft_wrap=True)
            continue
        table.add_row(Path(i.path).name, str(i.dim), str(i.n_unique), str(i.n_parts), f"{i.bytes / 1e6:.1f}",
                      f"{i.n_truncated} ({i.n_response_cut})", str(i.n_leftover))
    out.print(table)


def _info(directory: Path):
    """A cache's CacheInfo, or {path, error} for one that cannot be read (the listing goes on)."""
    try:
        return EmbeddingCache.open(directory).info()
    except EmbrmError as e:
        return {"path": str(directory), "error": str(e)}


@friendly
def cache_verify(path: CachePathArg = Path("cache"),
                 repair: Annotated[bool, typer.Option(
                     "--repair", help="Move parts that fail a check to quarantine/ (never deleted), restore "
                                      "fingerprint.json and the manifest from intact parts, remove temp files.")] = False,
                 format: FormatOpt = Format.text):
    """Check every byte of each cache (checksums, footer, values); report problems (exit 1), fix them with --repair.

    Example: embrm cache verify cache/ --repair   (then re-run `embrm embed`, or the `embrm import`, to refill what
             was dropped; a cache this user cannot write is refused, unchanged)
    """
    dirs = cache_dirs(path)
    problems = [p for d in dirs for p in verify(d)]
    notes = [n for d in dirs for n in find_leftovers(d)]
    reports = [repair_cache(d) for d in dirs] if repair and (problems or notes) else []
    if format == Format.json:
        print_json({"ok": not problems, "problems": problems, "leftovers": notes,
                    "repaired": [r.__dict__ for r in reports]})
    else:
        for p in problems:
            err.print(f"bad: {p}", markup=False, highlight=False, soft_wrap=True)
        for n in notes if not repair else []:
            out.print(f"note: {n}", markup=False, highlight=False, soft_wrap=True)
        for r in reports:
            for line in r.notes + [f"quarantined {q}" for q in r.quarantined] + [f"removed {t}" for t in r.removed]:
                out.print(line, markup=False, highlight=False, soft_wrap=True)
            if r.vectors_dropped:
                out.print(f"{r.vectors_dropped} vectors dropped from {r.path}: {r.refill} to put them back",
                          markup=False, highlight=False)
        if not problems:
            out.print(f"cache OK ({len(dirs)} cache director{'y' if len(dirs) == 1 else 'ies'}, every listed part "
                      f"checked)")
        elif not repair:
            err.print("run `embrm cache verify --repair` to set them aside, then re-run the `embrm embed` (or `embrm "
                      "import`) that filled the cache to put their rows back", markup=False)
    if problems and not repair:
        raise typer.Exit(1)
