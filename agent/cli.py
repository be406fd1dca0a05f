"""The ``hypha`` command line.

Every command is a thin client of the local agent's API except ``agent`` (runs
one), ``up`` (runs several), ``keygen`` and ``completion``. Expected errors print
one line, ``hypha: error: ...``, and exit non-zero; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from agent import __version__
from agent import logs as log_setup
from agent.client import ApiClient
from agent.config import default_api_address, default_data_dir
from agent.errors import HyphaError
from agent.secrets import generate_secret, write_secret

EXIT_ERROR = 1
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug in Hypha, not the user's fault


@dataclass
class CliState:
    api: str
    token: str | None
    verbose: int
    debug: bool

    def client(self, timeout: float = 30.0) -> ApiClient:
        return ApiClient(self.api, token=self.token, timeout=timeout)


def pass_state(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.pass_obj(fn)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain, aligned table for people; ``--json`` is for scripts."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


class HyphaGroup(click.Group):
    """Lists commands in the order they were added (most used first), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=HyphaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="hypha")
@click.option(
    "--api",
    metavar="ADDRESS",
    envvar="HYPHA_API",
    default=None,
    help="Agent API: unix:PATH or http://HOST:PORT [env HYPHA_API; "
    "default unix:DATA_DIR/api.sock].",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="HYPHA_TOKEN_FILE",
    help="Bearer token file for a TCP API [env HYPHA_TOKEN_FILE].",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(
    ctx: click.Context, api: str | None, token_file: Path | None, verbose: int, debug: bool
) -> None:
    """Hypha: a container orchestrator with no central control plane.

    Run `hypha agent` on every host (or `hypha up` to try a local cluster), then
    submit work with `hypha run`. Shell completion: eval "$(hypha completion bash)"
    (or zsh, fish) in your shell's rc file.
    """
    token = None
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {token_file}: {exc.strerror}") from exc
    ctx.obj = CliState(api=api or default_api_address(), token=token, verbose=verbose, debug=debug)
    log_setup.configure(verbose)


@cli.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the secret [default: DATA_DIR/secret]; '-' prints it.",
)
@click.option("--force", is_flag=True, help="Replace an existing secret file.")
def keygen(output: Path | None, force: bool) -> None:
    """Create a cluster secret (a 0600 file every agent of the cluster shares)."""
    secret = generate_secret()
    if output is not None and str(output) == "-":
        click.echo(secret)
        return
    path = output or default_data_dir() / "secret"
    write_secret(path, secret, force=force)
    click.echo(f"wrote a new cluster secret to {path} (mode 0600); copy it to every host")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script (eval it in your shell's rc file)."""
    from click.shell_completion import get_completion_class

    comp_cls = get_completion_class(shell)
    assert comp_cls is not None
    comp = comp_cls(cli, {}, "hypha", "_HYPHA_COMPLETE")
    click.echo(comp.source())


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"hypha: error: {message}", err=True)
    sys.exit(code)


def usage_message(exc: click.ClickException) -> str:
    """Click's message on one line, and the command whose ``--help`` explains it."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message = message.rstrip(".") + f" (see `{ctx.command_path} --help`)"
    return message


class ReplicaCount(click.ParamType):
    """A replica count, 0..MAX_REPLICAS. Commands that take it positionally also set
    ``ignore_unknown_options`` so that ``-1`` reaches here rather than being read as
    an unknown option (click said "No such option '-1'")."""

    name = "count"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from agent.spec import MAX_REPLICAS

        if isinstance(value, int):
            count = value
        else:
            try:
                count = int(str(value).strip())
            except ValueError:
                self.fail(f"the count must be a whole number, got {value!r}", param, ctx)
        if count < 0:
            self.fail(f"the count must be >= 0, got {count}", param, ctx)
        if count > MAX_REPLICAS:
            self.fail(f"the count must be at most {MAX_REPLICAS}, got {count}", param, ctx)
        return count


class Seconds(click.ParamType):
    """A finite, non-negative number of seconds (``--timeout``): click's float takes
    ``nan``, with which a deadline never comes."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"expected a number of seconds, got {value!r}", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"expected a finite number of seconds >= 0, got {value!r}", param, ctx)
        return seconds


def _command_name(args: Sequence[str]) -> str | None:
    """The subcommand in ``args``, skipping global options and their values."""
    takes_value = {"--api", "--token-file"}
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI, turning expected errors into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="hypha", standalone_mode=False)
    except click.exceptions.Abort:
        fail("interrupted", 130)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # a bare `hypha`: the help, not an error line
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        # A usage error (exit 2, the convention of getopt and argparse) or a bad
        # option file: one line like every other error, with where to read more.
        fail(usage_message(exc), exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except HyphaError as exc:
        if debug:
            raise
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:
        sys.exit(EXIT_ERROR)
    except Exception as exc:
        if debug:
            raise
        if _command_name(args) == "agent":
            # A long-running agent that dies of a bug must leave the whole story in its
            # log (its stderr); an interactive command stays at one line.
            logging.getLogger("hypha.agent").critical("agent crashed", exc_info=exc)
        fail(
            f"internal error: {type(exc).__name__}: {exc} (this is a bug in Hypha; "
            "run again with --debug for the traceback)",
            EXIT_INTERNAL,
        )


# Importing the command modules registers their commands on ``cli``.
from agent import agent_command as _agent_command  # noqa: E402,F401
from agent import commands as _commands  # noqa: E402,F401
from agent import event_commands as _event_commands  # noqa: E402,F401
from agent import keyring_command as _keyring_command  # noqa: E402,F401
from agent import mcp_command as _mcp_command  # noqa: E402,F401
from agent import rootfs_command as _rootfs_command  # noqa: E402,F401
from agent import workload_commands as _workload_commands  # noqa: E402,F401
