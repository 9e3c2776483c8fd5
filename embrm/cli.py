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

from embrm.aggregate import AGGREGATIONS as AGGREGATION_NAMES
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


def command_line(ctx: typer.Context) -> str:
    """The running command as a user would retype it (arguments and non-default options), for manifests."""
    import shlex

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


# Embedder options, shared by every command that may need to embed.
ModelOpt = typer.Option(None, "--model", "-m", help="Model id/path (default: packaged all-MiniLM-L6-v2; 'smollm2' = packaged SmolLM2-135M GGUF).")
BackendOpt = typer.Option("st", "--backend", "-b", help="st (sentence-transformers) | hf (causal-LM hidden state) | openai (HTTP endpoint).")
DtypeOpt = typer.Option("auto", "--dtype", help="auto (bf16 where the CPU/GPU supports it) | float32 | bfloat16.")
MaxLenOpt = typer.Option(None, "--max-length", help="Truncate texts to this many tokens.")
LayerOpt = typer.Option(-1, "--layer", help="hf: hidden layer to read (-1 = last).")
PoolingOpt = typer.Option("last", "--pooling", help="hf: last (last non-pad token) | mean_response.")
TemplateOpt = typer.Option("{prompt}\n\n{response}", "--template", help="Text sent to the model for each response.")
BaseUrlOpt = typer.Option(None, "--base-url", help="openai: endpoint base URL (.../v1).")
ApiKeyEnvOpt = typer.Option("OPENAI_API_KEY", "--api-key-env", help="openai: name of the env var holding the key.")
BatchOpt = typer.Option(64, "--batch-size", help="Texts per batch; each batch is one atomic cache part.")
# Column options for files (named datasets know their own columns).
PromptCol = typer.Option(None, "--prompt-col")
ResponseCol = typer.Option(None, "--response-col")
GoldCol = typer.Option(None, "--gold-col")
ResponseKey = typer.Option(None, "--response-key", help="Column telling a prompt's responses apart (e.g. model).")
ChosenCol = typer.Option(None, "--chosen-col")
RejectedCol = typer.Option(None, "--rejected-col")


def build_embedder(backend, model, dtype, max_length, layer, pooling, base_url, api_key_env):
    from embrm.embedders import make_embedder

    if backend == "openai":
        options = dict(base_url=base_url, api_key_env=api_key_env)
    else:
        options = dict(dtype=dtype, max_length=max_length)
        if backend == "hf":
            options.update(layer=layer, pooling=pooling)
    return make_embedder(backend, model, **{k: v for k, v in options.items() if v is not None})


def load_data(dataset, data_dir, prompt_col, response_col, gold_col, response_key, chosen_col, rejected_col):
    from embrm.datasets import load_dataset

    return load_dataset(dataset, data_dir, **dataset_options(prompt_col, response_col, gold_col, response_key,
                                                             chosen_col, rejected_col))


@app.command()
@friendly
def embed(
    dataset: str = typer.Argument(..., help="A named dataset (embrm datasets) or a file: .jsonl/.json/.parquet/.csv"),
    model: Optional[str] = ModelOpt, backend: str = BackendOpt, cache_dir: Path = CacheDir,
    batch_size: int = BatchOpt, max_length: Optional[int] = MaxLenOpt, dtype: str = DtypeOpt,
    layer: int = LayerOpt, pooling: str = PoolingOpt, template: str = TemplateOpt,
    base_url: Optional[str] = BaseUrlOpt, api_key_env: str = ApiKeyEnvOpt, data_dir: Optional[Path] = DataDir,
    prompt_col: Optional[str] = PromptCol, response_col: Optional[str] = ResponseCol,
    gold_col: Optional[str] = GoldCol, response_key: Optional[str] = ResponseKey,
    chosen_col: Optional[str] = ChosenCol, rejected_col: Optional[str] = RejectedCol,
    format: Format = FormatOpt,
):
    """Embed a dataset's (prompt, response) texts into the content-addressed Parquet cache (resumable).

    Example: embrm embed alpaca-eval-bon16                      (packaged MiniLM, offline)
             embrm embed pairs.jsonl --backend hf --model smollm2 --dtype bfloat16
    """
    from embrm.embed import embed_dataset

    ds = load_data(dataset, data_dir, prompt_col, response_col, gold_col, response_key, chosen_col, rejected_col)
    embedder = build_embedder(backend, model, dtype, max_length, layer, pooling, base_url, api_key_env)
    result = embed_dataset(ds, embedder, cache_dir=cache_dir, template=template, batch_size=batch_size,
                           progress=None if format == Format.text else False)
    summary = {"dataset": ds.name, **result.summary()}
    if format == Format.json:
        return print_json(summary)
    out.print(f"{ds!r}\nembedded {result.n_embedded} new texts, {result.n_cached} from cache "
              f"({result.n_texts} rows, {result.dim}-d) in {result.seconds:.1f}s -> {result.cache_dir}")


@app.command()
@friendly
def fit(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., help="A named dataset or a file (pool with gold, or pairs)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Model directory to write (must not exist)."),
    head: str = typer.Option("linear", "--head", help="linear | mlp | lgbm"),
    ensemble: int = typer.Option(10, "--ensemble", "-k", help="Number of members K."),
    mode: str = typer.Option("independent", "--mode", help="independent | bootstrap | shared_trunk (mlp) | linear_heads (linear)."),
    objective: Optional[str] = typer.Option(None, "--objective", help="mlp/lgbm: bt | classification."),
    hidden: str = typer.Option("1024,512", "--hidden", help="mlp: hidden layer widths (Sun et al.: 1024,512)."),
    epochs: int = typer.Option(30, "--epochs", help="mlp: maximum epochs (early stopping, patience 3)."),
    labels: str = typer.Option("auto", "--labels", help="human (the dataset's pairs) | simulated (from gold) | auto."),
    beta: float = typer.Option(10.0, "--beta", help="Simulated BT annotator: P(a>b) = sigmoid(beta (g_a - g_b) / std(gold)); the label error rate it gives depends on the pool (reported as label_accuracy)."),
    flip: Optional[float] = typer.Option(None, "--flip", help="Instead of --beta: flip this share of correct labels (Coste: 0.25)."),
    n_pairs: int = typer.Option(10_000, "--n-pairs", help="Simulated annotations on the training prompts."),
    across_prompts: bool = typer.Option(False, "--across-prompts", help="Draw simulated pairs across prompts (Sun et al.)."),
    test_size: float = typer.Option(0.2, "--test-size", help="Share of prompts held out for evaluation."),
    seed: int = typer.Option(0, "--seed"),
    model: Optional[str] = ModelOpt, backend: str = BackendOpt, cache_dir: Path = CacheDir,
    batch_size: int = BatchOpt, max_length: Optional[int] = MaxLenOpt, dtype: str = DtypeOpt,
    layer: int = LayerOpt, pooling: str = PoolingOpt, template: str = TemplateOpt,
    base_url: Optional[str] = BaseUrlOpt, api_key_env: str = ApiKeyEnvOpt, data_dir: Optional[Path] = DataDir,
    prompt_col: Optional[str] = PromptCol, response_col: Optional[str] = ResponseCol,
    gold_col: Optional[str] = GoldCol, response_key: Optional[str] = ResponseKey,
    chosen_col: Optional[str] = ChosenCol, rejected_col: Optional[str] = RejectedCol,
    format: Format = FormatOpt,
):
    """Train a K-member reward-model ensemble on embeddings (embedding what is missing) and save it.

    Example: embrm fit alpaca-eval-models --head mlp --ensemble 10 --flip 0.25 --out models/mlp-flip25
    """
    from embrm.embed import embed_dataset
    from embrm.persist import save_ensemble
    from embrm.train import LabelConfig, fit as fit_model

    if out_dir.exists():
        raise EmbrmError(f"{out_dir}: already exists: choose another --out or remove it")
    ds = load_data(dataset, data_dir, prompt_col, response_col, gold_col, response_key, chosen_col, rejected_col)
    embedder = build_embedder(backend, model, dtype, max_length, layer, pooling, base_url, api_key_env)
    emb = embed_dataset(ds, embedder, cache_dir=cache_dir, template=template, batch_size=batch_size,
                        progress=None if format == Format.text else False)
    label_config = LabelConfig(labels, beta, flip, n_pairs, not across_prompts)
    params = {"objective": objective} if objective else {}
    if head == "mlp":
        params.update(hidden=parse_ints(hidden, "--hidden"), epochs=epochs)
    result = fit_model(ds, emb.X, head=head, k=ensemble, mode=mode, labels=label_config, test_size=test_size,
                       seed=seed, **params)
    manifest = result.manifest(ds, emb.spec, emb.fingerprint)
    manifest["command"] = command_line(ctx)
    save_ensemble(out_dir, result.ensemble, manifest)
    if format == Format.json:
        return print_json({"model_dir": str(out_dir), **result.metrics})
    print_fit_metrics(result.metrics, f"{head} x{ensemble} ({mode}) on {ds.name}: held-out {result.metrics['against']}")
    out.print(f"saved -> {out_dir}")


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EmbrmError(f"{option} {text!r}: give comma-separated integers, e.g. 1024,512") from None


def print_fit_metrics(m: dict, title: str) -> None:
    table = Table("reward", "pairwise acc", "log-loss", "ECE", "spearman", title=title)
    sp = m.get("spearman")
    table.add_row("ensemble mean", f"{m['accuracy']:.3f}", f"{m['log_loss']:.3f}", f"{m['ece']:.3f}",
                  "-" if sp is None else f"{sp:.3f}")
    accs = m["member_accuracy"]
    table.add_row(f"members (min..max of {len(accs)})", f"{min(accs):.3f}..{max(accs):.3f}", "", "", "")
    table.add_row("length (longer is better)", f"{m['baseline_length_accuracy']:.3f}", "", "",
                  "-" if sp is None else f"{m['baseline_length_spearman']:.3f}")
    table.add_row("random", f"{m['baseline_random_accuracy']:.3f}", "", "", "")
    out.print(table)
    out.print(f"{m['n_test_pairs']} held-out pairs on {m['n_test_prompts']} prompts")


@app.command()
@friendly
def score(
    model_dir: Path = typer.Argument(..., help="A model directory written by `embrm fit`."),
    dataset: str = typer.Argument(..., help="Dataset whose responses to score (must be embedded)."),
    out_file: Path = typer.Option(..., "--out", "-o", help="Parquet file: response_id + one column per member."),
    cache_dir: Path = CacheDir, data_dir: Optional[Path] = DataDir,
    prompt_col: Optional[str] = PromptCol, response_col: Optional[str] = ResponseCol,
    gold_col: Optional[str] = GoldCol, response_key: Optional[str] = ResponseKey,
    chosen_col: Optional[str] = ChosenCol, rejected_col: Optional[str] = RejectedCol,
):
    """Write every member's score for every response of a dataset to Parquet.

    Example: embrm score models/mlp-flip25 alpaca-eval-models --out scores.parquet
    """
    from embrm.train import score_dataset

    ds = load_data(dataset, data_dir, prompt_col, response_col, gold_col, response_key, chosen_col, rejected_col)
    frame = score_dataset(model_dir, ds, cache_dir)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(out_file)
    out.print(f"{frame.width - 2} score columns for {len(frame)} responses -> {out_file}")


@app.command("bon-sim")
@friendly
def bon_sim(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., help="A pool with gold scores (named dataset or file)."),
    model_dir: Path = typer.Option(..., "--model", "-m", help="A model directory written by `embrm fit`."),
    agg: str = typer.Option(",".join(AGGREGATION_NAMES), "--agg", help="Comma-separated aggregations."),
    lam: float = typer.Option(0.5, "--lam", help="UWO: mean - lam * var (population variance)."),
    lcb_beta: float = typer.Option(1.0, "--lcb-beta", help="LCB: mean - beta * std."),
    temperature: float = typer.Option(1.0, "--temperature", help="Soft-min temperature."),
    member: int = typer.Option(0, "--member", help="The member used by 'single'."),
    n_max: Optional[int] = typer.Option(None, "--n-max", help="Largest n (default: the largest scored pool)."),
    prompts: str = typer.Option("test", "--prompts", help="test (the model's held-out prompts) | all."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Write curves, summary.json and PNGs here."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random baseline."),
    cache_dir: Path = CacheDir, data_dir: Optional[Path] = DataDir,
    prompt_col: Optional[str] = PromptCol, response_col: Optional[str] = ResponseCol,
    gold_col: Optional[str] = GoldCol, response_key: Optional[str] = ResponseKey,
    format: Format = FormatOpt,
):
    """Exact Best-of-n curves (n = 1..N) of a model's aggregations vs length and random baselines, vs KL.

    Example: embrm bon-sim alpaca-eval-models --model models/mlp-flip25 --agg mean,min,uwo --out results/bon
    """
    from embrm.persist import package_versions
    from embrm.simulate import bon_sim as simulate

    ds = load_data(dataset, data_dir, prompt_col, response_col, gold_col, response_key, None, None)
    aggregations = tuple(a.strip() for a in agg.split(",") if a.strip())
    result = simulate(model_dir, ds, cache_dir=cache_dir, aggregations=aggregations, lam=lam, beta=lcb_beta,
                      temperature=temperature, member=member, n_max=n_max, prompts=prompts, seed=seed,
                      data_dir=data_dir)
    result.summary.update(command=command_line(ctx), packages=package_versions())
    if out_dir is not None:
        result.write(out_dir, title=f"Best-of-n on {ds.name} ({prompts} prompts), {model_dir.name}")
    if format == Format.json:
        return print_json(result.summary)
    print_bon_summary(result)
    if out_dir is not None:
        out.print(f"curves, summary.json and plots -> {out_dir}")


def print_bon_summary(result) -> None:
    s = result.summary
    table = Table("proxy", "gold@n_max", "gain", "pctile", "best n", "spearman", "gao a", "gao b",
                  title=f"Best-of-n, n = 1..{s['n_max']} on {s['n_prompts']} prompts "
                        f"(random {s['random_at_n_max']:.3f}, oracle {s['oracle_at_n_max']:.3f})")
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    for row in result.table_rows():
        table.add_row(*(fmt(v) for v in row))
    out.print(table)
    picks = s.get("published_picks")
    if picks:
        t = Table("published reward model", "prompts", "gold of pick", "random", "oracle", "gain",
                  title="Published reward models' best-of-16 picks (same prompts; scored picks only)")
        for p in picks:
            t.add_row(p["reward_model"], str(p["n_prompts"]), *(fmt(p[k]) for k in ("gold", "random", "oracle", "gain")))
        out.print(t)


@app.command()
@friendly
def run(
    ctx: typer.Context,
    config: Optional[Path] = typer.Argument(None, help="A study TOML file (default: the default study, see embrm.study)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Results directory (default: results/<study name>)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Parallel jobs (default: all cores)."),
    backend: str = typer.Option("local", "--backend", help="local (worker processes) | ray."),
    address: Optional[str] = typer.Option(None, "--address", help="ray: cluster address (default: start a local Ray)."),
    cache_dir: Path = CacheDir, data_dir: Optional[Path] = DataDir, format: Format = FormatOpt,
):
    """Run a whole study: embed (cached), fit every (dataset, noise, learner, seed), Best-of-n, report.md + plots.

    Re-running resumes: finished jobs are kept. Example: embrm run            (the default study on the real pools)
             embrm run studies/smollm2.toml --backend ray
    """
    from embrm.experiment import run_study
    from embrm.study import load_study

    study = load_study(config)
    if backend not in ("local", "ray"):
        raise EmbrmError(f"--backend {backend!r}: use local or ray")
    out_dir = out_dir or Path("results") / study.name
    result = run_study(study, out_dir, cache_dir=cache_dir, data_dir=data_dir, workers=workers, backend=backend,
                       address=address, progress=None if format == Format.text else False, command=command_line(ctx))
    if format == Format.json:
        return print_json({"out_dir": str(out_dir), "findings": result.findings, "timings": result.timings})
    from rich.markdown import Markdown

    out.print(Markdown("\n".join(f"- {f}" for f in result.findings)))
    out.print(f"report -> {result.report_path}  ({result.timings['total']:.0f}s)")


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


def _register_methods() -> None:
    """The further seeds' commands (LASeR, MoE, composite, policy) live beside their methods."""
    from embrm.methods import cli_composite_policy, cli_laser_moe

    cli_laser_moe.register(app)
    cli_composite_policy.register(app)


_register_methods()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
