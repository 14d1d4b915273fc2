"""The ``nerncompress`` Typer app: the command group, its error mapping, and one command per module.

Each command lives in a module of its own (``fit.py``, ``distill.py``, ...): it parses its options, calls one
library job (``nerncompress.run_fit``, ...) and renders the summary the job returns. Errors raised by the library
are mapped to exit codes by ``NernGroup`` (see ``output.EXIT_CODES``).

Adding a command: write ``<name>.py`` with a ``<name>_command`` function, its own options (shared ones come from
``options.py``), an ``EPILOG`` of examples and a ``render`` function; register it below.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .. import __version__
from . import compress, compress_predictor, demo, distill, env, evaluate, expand, fit, inspect, output, select

try:  # typer >= 0.20 vendors click as typer._click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on real click
    from click import exceptions as click_exceptions  # type: ignore[no-redef]
# typer 0.29 defines Abort in typer.exceptions, not in its vendored click: naming a missing attribute in an except
# clause raised AttributeError whenever an exception reached it (e.g. `nerncompress --help | head -1`).
_ABORT: type[BaseException] = getattr(click_exceptions, "Abort", typer.Abort)


class NernGroup(TyperGroup):
    """The command group; maps exceptions raised by a command to ``Error: ...`` and an exit code.

    Mapping here rather than only in ``main()`` makes ``typer.testing.CliRunner`` see the same exit codes and
    messages as a real process. ``main`` runs click without its standalone mode so that parsing errors (unknown
    option, bad value, missing argument) print one ``Error:`` line too, instead of a usage block and a boxed panel.
    """

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exceptions.NoArgsIsHelpError as exc:
            sys.exit(exc.exit_code)  # the help is already printed
        except click_exceptions.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            sys.exit(output.report_usage_error(exc, ctx.command_path if ctx is not None else None))
        except _ABORT:
            sys.exit(output.report_error(KeyboardInterrupt()))
        sys.exit(code if isinstance(code, int) else output.EXIT_OK)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # Typer's own: exits, usage errors (exit 2), --help
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every other error gets one line + a code
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            raise typer.Exit(output.report_error(exc, _flags_of(command))) from exc


def _flags_of(command: Any) -> dict[str, str]:
    """Keyword name -> the command's flag for it (``ema_decay`` -> ``--ema``), to word errors as the user typed."""
    if command is None:
        return {}
    return {param.name: max(param.opts, key=len) for param in command.params
            if getattr(param, "param_type_name", "") == "option" and param.name}


def _root_epilog() -> str:
    codes = "\n".join(f"* **{code}**: {meaning}" for code, meaning in output.EXIT_CODE_DOCS)
    return (
        "Results go to stdout (--json: exactly one JSON document), progress and logs to stderr (plain lines when "
        "stderr is not a terminal). NO_COLOR turns colours off. Errors are one line 'Error: ...' on stderr; set "
        f"{output.DEBUG_ENV}=1 for the traceback.\n\nExit codes:\n\n{codes}"
    )


app = typer.Typer(
    name="nerncompress",
    cls=NernGroup,
    epilog=_root_epilog(),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # reflows docstring paragraphs written over several source lines
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"nerncompress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Compress trained CNN checkpoints into a small predictor network (NeRN) and expand them back."""


# The whole job first, then its stages in order (fit, distill, compress the predictor, expand), then the tools.
app.command("compress", epilog=compress.EPILOG)(compress.compress_command)
app.command("fit", epilog=fit.EPILOG)(fit.fit_command)
app.command("distill", epilog=distill.EPILOG)(distill.distill_command)
app.command("quantize", epilog=compress_predictor.QUANTIZE_EPILOG)(compress_predictor.quantize_command)
app.command("prune", epilog=compress_predictor.PRUNE_EPILOG)(compress_predictor.prune_command)
app.command("expand", epilog=expand.EPILOG)(expand.expand_command)
app.command("eval", epilog=evaluate.EPILOG)(evaluate.eval_command)
app.command("select", epilog=select.EPILOG)(select.select_command)
app.command("inspect", epilog=inspect.EPILOG)(inspect.inspect_command)
app.command("env", epilog=env.EPILOG)(env.env_command)
app.command("demo", epilog=demo.EPILOG)(demo.demo_command)
