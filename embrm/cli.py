"""The `embrm` command line: thin typer commands over the Python API (no logic of their own)."""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from embrm.errors import EmbrmError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Embed (prompt, response) texts once; fit reward-model ensembles and simulate Best-of-N on a CPU.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and check the embedding cache.")
app.add_typer(cache_app, name="cache")
out = Console()
err = Console(stderr=True)


class Format(str, Enum):
    text = "text"
    json = "json"


def friendly(fn):
    """Turn EmbrmError (and Ctrl-C) into one line on stderr and a non-zero exit, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EmbrmError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err.print("interrupted: finished batches are cached; re-run the same command to resume")
            raise typer.Exit(130)
    return wrapper


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


# Shared options ------------------------------------------------------------------------------------------------
DataDir = typer.Option(None, "--data-dir", help="Where named datasets live (default: $EMBRM_DATA_DIR).")
CacheDir = typer.Option(Path("cache"), "--cache-dir", help="Embedding cache root.")
FormatOpt = typer.Option(Format.text, "--format", help="text (tables) or json (machine-readable summary).")


def dataset_options(prompt_col, response_col, gold_col, response_key, chosen_col, rejected_col) -> dict:
    opts = dict(prompt_col=prompt_col, response_col=response_col, gold_col=gold_col, response_key=response_key,
                chosen_col=chosen_col, rejected_col=rejected_col)
    return {k: v for k, v in opts.items() if v is not None}


@app.command()
@friendly
def datasets(data_dir: Optional[Path] = DataDir, format: Format = FormatOpt):
    """List the named datasets, their sources and whether they are present locally.

    Example: embrm datasets --data-dir ../shared/data
    """
    from embrm.datasets import REGISTRY, data_dir as resolve

    root = resolve(data_dir)
    rows = [dict(name=i.name, kind=i.kind, present=(root / i.path).exists(), path=str(root / i.path),
                 description=i.description, source=i.source) for i in REGISTRY.values()]
    if format == Format.json:
        return print_json(rows)
    table = Table("name", "kind", "present", "description", title=f"datasets in {root}")
    for r in rows:
        table.add_row(r["name"], r["kind"], "yes" if r["present"] else "no", r["description"])
    out.print(table)


@app.command()
@friendly
def embed(
    dataset: str = typer.Argument(..., help="A named dataset (embrm datasets) or a file: .jsonl/.json/.parquet/.csv"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model id/path (default: packaged all-MiniLM-L6-v2; 'smollm2' for the packaged SmolLM2 GGUF)."),
    backend: str = typer.Option("st", "--backend", "-b", help="st (sentence-transformers) | hf (causal LM last token) | openai (HTTP endpoint)."),
    cache_dir: Path = CacheDir,
    batch_size: int = typer.Option(64, "--batch-size", help="Texts per batch; each batch is one atomic cache part."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate texts to this many tokens."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on AMX CPUs / GPUs) | float32 | bfloat16."),
    layer: int = typer.Option(-1, "--layer", help="hf: hidden layer to read (-1 = last)."),
    pooling: str = typer.Option("last", "--pooling", help="hf: last (last non-pad token) | mean_response."),
    template: str = typer.Option("{prompt}\n\n{response}", "--template", help="Text sent to the model."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="openai: endpoint base URL (…/v1)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="openai: env var holding the key."),
    data_dir: Optional[Path] = DataDir,
    prompt_col: Optional[str] = typer.Option(None, "--prompt-col"),
    response_col: Optional[str] = typer.Option(None, "--response-col"),
    gold_col: Optional[str] = typer.Option(None, "--gold-col"),
    response_key: Optional[str] = typer.Option(None, "--response-key", help="Column telling a prompt's responses apart."),
    chosen_col: Optional[str] = typer.Option(None, "--chosen-col"),
    rejected_col: Optional[str] = typer.Option(None, "--rejected-col"),
    format: Format = FormatOpt,
):
    """Embed a dataset's (prompt, response) texts into the content-addressed Parquet cache (resumable).

    Example: embrm embed alpaca-eval-bon16                      (packaged MiniLM, offline)
             embrm embed pairs.jsonl --backend hf --model smollm2 --dtype bfloat16
    """
    from embrm.datasets import load_dataset
    from embrm.embed import embed_dataset
    from embrm.embedders import make_embedder

    ds = load_dataset(dataset, data_dir, **dataset_options(prompt_col, response_col, gold_col, response_key,
                                                            chosen_col, rejected_col))
    options = dict(dtype=dtype, max_length=max_length)
    if backend == "hf":
        options.update(layer=layer, pooling=pooling)
    if backend == "openai":
        options = dict(base_url=base_url, api_key_env=api_key_env)
    embedder = make_embedder(backend, model, **{k: v for k, v in options.items() if v is not None})
    result = embed_dataset(ds, embedder, cache_dir=cache_dir, template=template, batch_size=batch_size,
                           progress=None if format == Format.text else False)
    summary = {"dataset": ds.name, **result.summary()}
    if format == Format.json:
        return print_json(summary)
    out.print(f"{ds!r}\nembedded {result.n_embedded} new texts, {result.n_cached} from cache "
              f"({result.n_texts} rows, {result.dim}-d) in {result.seconds:.1f}s -> {result.cache_dir}")


def _caches(path: Path):
    from embrm.cache import EmbeddingCache, list_caches

    if (path / "fingerprint.json").exists():
        return [EmbeddingCache.open(path)]
    if not path.exists():
        raise EmbrmError(f"{path}: no such cache directory: pass --cache-dir used by `embrm embed`")
    return list_caches(path)


@cache_app.command("info")
@friendly
def cache_info(path: Path = typer.Argument(Path("cache"), help="Cache root or one embedder's cache directory."),
               format: Format = FormatOpt):
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


@cache_app.command("verify")
@friendly
def cache_verify(path: Path = typer.Argument(Path("cache"), help="Cache root or one embedder's cache directory."),
                 repair: bool = typer.Option(False, "--repair", help="Delete corrupt parts and leftover temp files."),
                 format: Format = FormatOpt):
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
