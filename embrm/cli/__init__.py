"""The `embrm` command line: thin typer commands over the Python API, assembled here from one module per area
(data and cache, models, studies, methods); shared options live in embrm.cli.common."""

from __future__ import annotations

import typer

from embrm.cli import data, methods, model, study

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Embed (prompt, response) texts once; fit reward-model ensembles and simulate Best-of-N "
                       "on a CPU.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and check the embedding cache.")
app.add_typer(cache_app, name="cache")

app.command()(data.datasets)
app.command()(data.embed)
cache_app.command("info")(data.cache_info)
cache_app.command("verify")(data.cache_verify)
app.command()(model.fit)
app.command()(model.score)
app.command("bon-sim")(model.bon_sim)
app.command()(study.run)
for command in (methods.laser, methods.moe, methods.composite, methods.policy):
    app.command()(command)


def main() -> None:
    app()
