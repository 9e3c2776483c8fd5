"""The `embrm` command line: thin typer commands over the Python API, assembled here from one module per area
(data and cache, models, studies, methods, active labelling); shared options live in embrm.cli.common."""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperGroup

from embrm.cli import active, data, imports, methods, model, rl, serve, study
from embrm.cli.common import error_line, quiet_libraries
from embrm.embedding.backends import VERBOSE_ENV


class OneLineErrors(TyperGroup):
    """Usage errors (a bad option value, a missing argument) as one `error:` line and exit 2, like every other
    error, instead of click's multi-line panel."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as e:  # click's errors (typer vendors click: they derive from this)
            ctx = getattr(e, "ctx", None)  # usage errors carry the command's context
            if type(e).__name__ == "NoArgsIsHelpError":  # `embrm cache` alone: its help (typer tells it by name too)
                print(ctx.get_help() if ctx else str(e))
                raise SystemExit(2) from None
            hint = f" (see `{ctx.command_path if ctx else 'embrm'} --help`)" if hasattr(e, "ctx") else ""
            error_line(e.format_message() + hint)
            raise SystemExit(e.exit_code) from None
        except typer.Abort:
            error_line("aborted")
            raise SystemExit(130) from None
        raise SystemExit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Embed (prompt, response) texts once; fit reward-model ensembles and simulate Best-of-N "
                       "on a CPU.")


@app.callback()
def _options(verbose: bool = typer.Option(
        False, "--verbose", help="Show the model libraries' own output (log lines, progress bars) while a model "
                                 "loads; without it a failure is one line.")) -> None:
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


cache_app = typer.Typer(no_args_is_help=True, help="Inspect and check the embedding cache.")
app.add_typer(cache_app, name="cache")

app.command()(data.datasets)
app.command()(data.embed)
app.command("import")(imports.import_)
cache_app.command("info")(data.cache_info)
cache_app.command("verify")(data.cache_verify)
app.command()(model.fit)
app.command()(model.score)
app.command("bon-sim")(model.bon_sim)
app.command()(study.run)
app.command()(study.plan)
for command in (methods.laser, methods.moe, methods.composite, methods.policy):
    app.command()(command)
app.command()(active.active)
app.command()(rl.rl)
app.command()(serve.serve)


def main() -> None:
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        quiet_libraries()  # a file or a pipe gets no library progress bars
    app()
