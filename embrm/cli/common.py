"""What every command shares: option groups declared once, one-line errors, output formats, the command line.

An option group is a dataclass whose fields carry their typer options; `@grouped(data=DataOptions, ...)` adds the
fields to a command's options and hands the command one instance per group, so `embed`, `fit`, `score`, `bon-sim`
and the methods take the same dataset and embedder options, spelled the same way.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import shlex
import sys
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional, get_type_hints

import typer
from rich.console import Console, ConsoleDimensions

from embrm.core import NO_SPACE, EmbrmError, check_out, exclusive
from embrm.data import Dataset, load_dataset
from embrm.embedding import DEFAULT_TEMPLATE, EmbedderConfig, EmbedResult

UNWRAPPED = 100_000  # the width of a file or pipe: no line is wrapped (rich would wrap at 80 columns)


class PlainWhenPiped(Console):
    """rich on a terminal; written to a file or a pipe, every line whole (no wrap at 80 columns, no colour), so
    redirected output reads and greps like the terminal's."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        return size if self.is_terminal else ConsoleDimensions(UNWRAPPED, size.height)


out = PlainWhenPiped()
err = PlainWhenPiped(stderr=True)


def print_markdown(text: str) -> None:
    """Rendered on a terminal; as the markdown itself elsewhere (rich pads rendered markdown to the width)."""
    if not out.is_terminal:
        return out.print(text, markup=False, highlight=False)
    from rich.markdown import Markdown  # 50 ms of imports that `--help` need not pay

    out.print(Markdown(text))


def quiet_libraries() -> None:
    """No progress bars of the model libraries (transformers' "Loading weights", hub downloads): embrm reports its
    own progress, and a file or a JSON reader wants none. The environment variable covers libraries not yet
    imported (they load lazily, when a command embeds); the calls those already imported."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


class Format(str, Enum):
    text = "text"
    json = "json"


def _format_chosen(value: Format) -> Format:
    if value == Format.json:
        quiet_libraries()  # stdout is the JSON; stderr carries no library bars either
    return value


FormatOpt = Annotated[Format, typer.Option("--format", callback=_format_chosen,
                                           help="text (tables) or json (machine-readable summary).")]
CacheDirOpt = Annotated[Path, typer.Option("--cache-dir", help="Embedding cache root.")]
OutDirOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the results (JSON, Parquet, PNG) here.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seeds the prompt split, the simulated labels and the fit.")]
WithExcludedOpt = Annotated[bool, typer.Option(
    "--with-excluded/--without-excluded",
    help="Also evaluate pools that keep the dataset's excluded responses (e.g. the hacking probes of "
         "alpaca-eval-models; they never label or train) and report how often each reward picks one.")]
DatasetArg = Annotated[str, typer.Argument(
    help="A named dataset (embrm datasets), a data file (.jsonl/.json/.parquet/.csv) or a dataset declaration "
         "(.toml: path, columns, exclude).")]


@dataclass
class DataOptions:
    """Where a dataset lives and, for data files, its columns and exclusion rule (a .toml declaration holds them
    once)."""

    data_dir: Annotated[Optional[Path], typer.Option(
        "--data-dir", help="Where named datasets live (default: $EMBRM_DATA_DIR, else ~/.cache/embrm/data).")] = None
    prompt_col: Annotated[Optional[str], typer.Option("--prompt-col", help="Prompt column of a data file.")] = None
    response_col: Annotated[Optional[str], typer.Option("--response-col", help="Response column (pools).")] = None
    gold_col: Annotated[Optional[str], typer.Option("--gold-col", help="Gold score column (pools).")] = None
    response_key: Annotated[Optional[str], typer.Option(
        "--response-key", help="Column telling a prompt's responses apart (e.g. model).")] = None
    prompt_id_col: Annotated[Optional[str], typer.Option("--prompt-id-col", help="Prompt id column (pools).")] = None
    chosen_col: Annotated[Optional[str], typer.Option("--chosen-col", help="Chosen column (pairs).")] = None
    rejected_col: Annotated[Optional[str], typer.Option("--rejected-col", help="Rejected column (pairs).")] = None
    exclude: Annotated[Optional[str], typer.Option(
        "--exclude", help="COLUMN=REGEX: responses that never label, train or enter an evaluated pool "
                          "(e.g. 'model=^NullModel$|_verbose$').")] = None

    def load(self, source: str) -> Dataset:
        columns = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("data_dir", "exclude")}
        return load_dataset(source, self.data_dir, exclude=self.exclude, **columns)


@dataclass
class EmbedderOptions:
    """Which embedder (and text template) makes the vectors; every command that may embed takes these."""

    backend: Annotated[str, typer.Option(
        "--backend", "-b", help="st (sentence-transformers) | hf (causal-LM hidden state) | openai (HTTP) | imported "
                                 "(vectors `embrm import` registered; --model: the directory it printed).")] = "st"
    model: Annotated[Optional[str], typer.Option(
        "--model", help="Model id/path (default: packaged all-MiniLM-L6-v2; 'smollm2' = packaged SmolLM2-135M "
                        "GGUF).")] = None
    dtype: Annotated[str, typer.Option(
        "--dtype", help="auto (bf16 where this CPU multiplies it fast; st: int8 on OpenVINO where this CPU has "
                        "int8 dot products and int8 agrees with float32) | float32 | bfloat16 | int8.")] = "auto"
    max_length: Annotated[Optional[int], typer.Option(
        "--max-length", help="Truncate texts to this many tokens.")] = None
    layer: Annotated[int, typer.Option("--layer", help="hf: hidden layer to read (-1 = last).")] = -1
    pooling: Annotated[str, typer.Option(
        "--pooling", help="hf: last (last non-pad token) | mean | mean_response | max.")] = "last"
    template: Annotated[str, typer.Option(
        "--template", help="Text sent to the model for each response: a format with {prompt} and {response}, "
                           "'plain' (the default) or 'chat' (hf: the model's own chat template).")] = \
        DEFAULT_TEMPLATE
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="openai: endpoint base URL (.../v1).")] = None
    api_key_env: Annotated[str, typer.Option(
        "--api-key-env", help="openai: name of the env var holding the key.")] = "OPENAI_API_KEY"
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="Texts per batch; each batch is one atomic cache part.")] = 64
    device: Annotated[str, typer.Option(
        "--device", help="auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps (st and hf).")] = "auto"
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", help="hf: token budget per forward batch (rows x longest row; texts go longest first); "
                             "the vectors do not depend on it.")] = None

    def config(self) -> EmbedderConfig:
        with options_named({f.name: f"--{f.name.replace('_', '-')}" for f in fields(self)}):
            return EmbedderConfig(**{f.name: getattr(self, f.name) for f in fields(self)})

    def embed(self, ds: Dataset, cache_dir: Path, fmt: Format) -> EmbedResult:
        return self.config().embed(ds, cache_dir, progress=None if fmt == Format.text else False)


@functools.cache
def _hints(cls: type) -> dict:
    """A group's option annotations, evaluated once (every command that takes the group reuses them)."""
    return get_type_hints(cls, include_extras=True)


def grouped(**groups: type):
    """Add each option group's fields to a command's options; the command receives one instance per group."""
    def decorate(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p for name, p in sig.parameters.items() if name not in groups]
        added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                   annotation=_hints(cls)[f.name])
                 for cls in groups.values() for f in fields(cls)]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for name, cls in groups.items():
                kwargs[name] = cls(**{f.name: kwargs.pop(f.name) for f in fields(cls)})
            return fn(*args, **kwargs)

        params = own + added
        wrapper.__signature__ = sig.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper
    return decorate


def error_line(message: str) -> None:
    """One line on stderr; the message is printed verbatim (no rich markup: `[[learners]]` and `embrm[hf]` stay)."""
    err.print("[bold red]error:[/] ", end="")
    err.print(" ".join(str(message).split()), markup=False, highlight=False, soft_wrap=True)


def friendly(fn):
    """Turn EmbrmError, OS errors (a path that is a directory, unreadable, on a full disk) and Ctrl-C into one line
    on stderr and a non-zero exit, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EmbrmError as e:
            error_line(str(e))
            raise typer.Exit(2) from None
        except OSError as e:
            where = e.filename or "a file"
            fix = "free space on its disk, or choose another path" if e.errno in NO_SPACE else \
                "check the path and its permissions"
            error_line(f"{where}: {e.strerror or type(e).__name__}: {fix}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted: finished batches are cached; re-run the same command to resume")
            raise typer.Exit(130) from None
    return wrapper


def command_line(ctx: typer.Context) -> str:
    """The running command as a user would retype it (arguments and non-default options), for manifests."""
    parts = ["embrm", *ctx.command_path.split()[1:]]  # the program name differs under test runners
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        source = ctx.get_parameter_source(param.name)
        if value is None or source is None or source.name == "DEFAULT":
            continue
        value = value.value if isinstance(value, Enum) else value
        if param.param_type_name == "argument":
            parts.append(shlex.quote(str(value)))
        elif isinstance(value, bool):
            parts.append(param.opts[0] if value else (param.secondary_opts or param.opts)[0])
        else:
            parts += [param.opts[0], shlex.quote(str(value))]
    return " ".join(parts)


@contextlib.contextmanager
def options_named(options: dict[str, str]):
    """API errors name their field (EmbrmError.field); a command-line user needs the option that sets it:
    `options` maps field -> option, and an error about a mapped field is prefixed with its option."""
    try:
        yield
    except EmbrmError as e:
        option = options.get(e.field)
        if option is None or str(e).startswith(option):
            raise
        raise EmbrmError(f"{option}: {e}", field=e.field) from None


# The API's field -> the option that sets it, for the options every command shares
EMBED_OPTION = {"runner": "--runner", "shard": "--shard", "workers": "--workers", "address": "--address",
                "views": "--views"}


def claim_out(ctx: typer.Context, path: Path | None, overwrite: bool = True, *, file: bool = False,
              option: str = "--out") -> None:
    """The one --out check (embrm.core.check_out), then this command holds the target's one-writer lock until it
    ends: two commands writing one result fail at once instead of replacing each other's."""
    check_out(path, overwrite, file=file, option=option)
    if path is not None:
        ctx.with_resource(exclusive(path, option))


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def split_list(values: list[str] | None) -> list[str]:
    """Comma lists and repeated options alike: ["a,b", "c"] -> ["a", "b", "c"]."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def parse_numbers(values: list[str] | str | None, option: str, kind=float) -> list | None:
    items = split_list([values] if isinstance(values, str) else values)
    if not items:
        return None
    try:
        return [kind(v) for v in items]
    except ValueError:
        raise EmbrmError(f"{option}: expected comma-separated {kind.__name__}s, got {','.join(items)!r}") from None


OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace results already at --out (without it, a non-empty --out is refused).")]
