"""`embrm import`: register embeddings computed elsewhere in the cache, for `--backend imported`."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from embrm.cli.common import CacheDirOpt, DataOptions, DatasetArg, Format, FormatOpt, friendly, grouped, out, print_json
from embrm.embedding import DEFAULT_CACHE_DIR, DEFAULT_TEMPLATE, SUFFIXES, import_embeddings


@friendly
@grouped(data=DataOptions)
def import_(dataset: DatasetArg,
            file: Annotated[Path, typer.Argument(help=f"The embeddings ({', '.join(SUFFIXES)}).")],
            data: DataOptions,
            model: Annotated[str, typer.Option("--model", help="The model that made the vectors (recorded).")],
            layer: Annotated[Optional[str], typer.Option("--layer", help="Its hidden layer (recorded).")] = None,
            pooling: Annotated[Optional[str], typer.Option("--pooling", help="Its pooling (recorded).")] = None,
            order: Annotated[Optional[str], typer.Option(
                "--order", help="(rows, d) arrays: 'rows' (the dataset's row order), a text file of response ids "
                                "(one a line) or a .parquet's id column. (prompts, responses, d) arrays need none.")] = None,
            key: Annotated[Optional[str], typer.Option(
                "--key", help="The array (.npz/.safetensors/torch dict) or list column (.parquet) to take.")] = None,
            template: Annotated[str, typer.Option(
                "--template", help="The template the fit will render texts with (keys the vectors).")] = DEFAULT_TEMPLATE,
            cache_dir: CacheDirOpt = Path(DEFAULT_CACHE_DIR), format: FormatOpt = Format.text):
    """Register embeddings made elsewhere (e.g. Sun et al.'s torch.save'd (prompts, responses, d) arrays) in the
    cache, so fit, bon-sim, run and the Python API use them with --backend imported (no model is loaded).

    Example: embrm import alpaca-eval-bon16 gemma2b.pt --model google/gemma-2-2b --layer 18 --pooling last
    """
    ds = data.load(dataset)
    result = import_embeddings(ds, file, model=model, layer=layer, pooling=pooling, order=order, key=key,
                               template=template, cache_dir=cache_dir)
    extra = [] if cache_dir == Path(DEFAULT_CACHE_DIR) else ["--cache-dir", str(cache_dir)]
    extra += [] if template == DEFAULT_TEMPLATE else ["--template", template]
    use = shlex.join(["--backend", "imported", "--model", result.cache_dir, *extra])
    if format == Format.json:
        return print_json({"dataset": ds.name, **result.summary(), "use": use})
    out.print(f"{ds!r}\nimported {result.n} rows ({result.n_unique} texts, {result.dim}-d, {result.layout}; "
              f"{result.n_written} new) from {file} -> {result.cache_dir}\nfingerprint {result.fingerprint}\n"
              f"next: embrm fit {shlex.quote(dataset)} {use} --out MODEL_DIR", markup=False, highlight=False,
              soft_wrap=True)  # the command stays one copyable line
