"""Commands over data and the embedding cache: `datasets`, `embed`, `cache info`, `cache verify`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from embrm.cache import EmbeddingCache, list_caches
from embrm.cli.common import (
    CacheDirOpt,
    DataOptions,
    DatasetArg,
    EmbedderOptions,
    Format,
    FormatOpt,
    err,
    friendly,
    grouped,
    out,
    print_json,
)
from embrm.datasets import REGISTRY
from embrm.datasets import data_dir as resolve_data_dir
from embrm.errors import EmbrmError

CachePathArg = Annotated[Path, typer.Argument(help="Cache root or one embedder's cache directory.")]


@friendly
def datasets(data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Where named datasets live.")] = None,
             format: FormatOpt = Format.text):
    """List the named datasets, their sources, exclusion rules and whether they are present locally.

    Example: embrm datasets --data-dir ../shared/data
    """
    root = resolve_data_dir(data_dir)
    rows = [dict(name=i.name, kind=i.kind, present=(root / i.path).exists(), path=str(root / i.path),
                 description=i.description, source=i.source,
                 excluded=None if i.exclude is None else f"{i.exclude.name}: {i.exclude.column} ~ {i.exclude.pattern}")
            for i in REGISTRY.values()]
    if format == Format.json:
        return print_json(rows)
    table = Table("name", "kind", "present", "description", title=f"datasets in {root}")
    for r in rows:
        table.add_row(r["name"], r["kind"], "yes" if r["present"] else "no", r["description"])
    out.print(table)


@friendly
@grouped(data=DataOptions, embedder=EmbedderOptions)
def embed(dataset: DatasetArg, data: DataOptions, embedder: EmbedderOptions, cache_dir: CacheDirOpt = Path("cache"),
          format: FormatOpt = Format.text):
    """Embed a dataset's (prompt, response) texts into the content-addressed Parquet cache (resumable).

    Example: embrm embed alpaca-eval-bon16                      (packaged MiniLM, offline)
             embrm embed my-pool.toml --backend hf --model smollm2 --dtype bfloat16
    """
    ds = data.load(dataset)
    result = embedder.embed(ds, cache_dir, format)
    if format == Format.json:
        return print_json({"dataset": ds.name, **result.summary()})
    out.print(f"{ds!r}\nembedded {result.n_embedded} new texts, {result.n_cached} from cache "
              f"({result.n_texts} rows, {result.dim}-d) in {result.seconds:.1f}s -> {result.cache_dir}")


def _caches(path: Path):
    if (path / "fingerprint.json").exists():
        return [EmbeddingCache.open(path)]
    if not path.exists():
        raise EmbrmError(f"{path}: no such cache directory: pass --cache-dir used by `embrm embed`")
    return list_caches(path)


@friendly
def cache_info(path: CachePathArg = Path("cache"), format: FormatOpt = Format.text):
    """Show each embedder's cache: model, fingerprint, dim, vectors, parts, size.

    Example: embrm cache info cache/
    """
    infos = [c.info() for c in _caches(path)]
    if format == Format.json:
        return print_json([i.__dict__ for i in infos])
    table = Table("directory", "model", "dim", "vectors", "parts", "MB", title=f"embedding caches in {path}")
    for i in infos:
        table.add_row(Path(i.path).name, str(i.spec.get("model")), str(i.dim), str(i.n_unique), str(i.n_parts),
                      f"{i.bytes / 1e6:.1f}")
    out.print(table)


@friendly
def cache_verify(path: CachePathArg = Path("cache"),
                 repair: Annotated[bool, typer.Option("--repair", help="Delete corrupt parts and leftover temp "
                                                                       "files.")] = False,
                 format: FormatOpt = Format.text):
    """Read every part fully; report truncated/corrupt parts (exit 1), and delete them with --repair.

    Example: embrm cache verify cache/ --repair   (then re-run `embrm embed` to re-embed the lost rows)
    """
    problems = [p for c in _caches(path) for p in c.verify(repair=repair)]
    if format == Format.json:
        print_json({"ok": not problems, "problems": problems, "repaired": repair})
    else:
        for p in problems:
            err.print(f"[red]bad:[/] {p}", highlight=False, soft_wrap=True)
        if not problems:
            out.print("cache OK")
        elif repair:
            out.print(f"removed {len(problems)} bad file(s): re-run `embrm embed` to re-embed their rows")
        else:
            err.print("run `embrm cache verify --repair` to delete them, then `embrm embed` to re-embed their rows")
    if problems and not repair:
        raise typer.Exit(1)
