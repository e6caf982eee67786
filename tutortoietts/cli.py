"""The `tutortoietts` command: a thin Typer app; each command lives in tutortoietts/commands/."""

from __future__ import annotations

import os
import signal
import sys

import typer

app = typer.Typer(
    name="tutortoietts",
    help="Turn a manuscript into an audiobook with the Tortoise TTS models, fast.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Here rather than at import time, so that importing tutortoietts.cli (tests, tools) stays cheap.
    from tutortoietts.commands.say import say
    from tutortoietts.commands import bench, chapters, check, generate, library, models, profile

    app.command("generate")(generate.generate)
    app.command("say")(say)
    app.command("chapters")(chapters.chapters)
    app.command("check")(check.check)
    app.command("voices")(library.voices)
    app.command("jobs")(library.jobs)
    app.command("presets")(library.presets)
    app.command("bench")(bench.bench)
    app.command("profile")(profile.profile)
    from tutortoietts.commands.qa import qa
    from tutortoietts.commands.redo import redo

    app.command("qa")(qa)
    app.command("redo")(redo)
    app.add_typer(models.app, name="models")
    app.add_typer(library.cache_app, name="cache")


class Terminated(BaseException):
    """SIGTERM, raised wherever the program is, so that `with` blocks close the job and the cache
    and a half-written file is removed. A BaseException, so that no per-chunk `except Exception`
    mistakes it for that chunk's failure."""


def _raise_terminated(signum, frame):
    raise Terminated


def debug_enabled() -> bool:
    return os.environ.get("TUTORTOIETTS_DEBUG", "") not in ("", "0") or "--debug" in sys.argv


def one_line(text: str) -> str:
    """A message on one line: a file name or a library's reason may carry newlines, and a
    script reading stderr (or a person) should get exactly one line per error."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def is_click_error(error: BaseException) -> bool:
    """An error click reports itself (a usage error: unknown option, missing argument, bad value).

    Recognised by click's base class name, because typer 0.26 and later raise their own copy of
    click's exceptions (typer._click), which an `except click.ClickException` never catches: that
    is how `--fmt mp3` came out as "error: NoSuchOption" with exit 1.
    """
    return any(kind.__name__ == "ClickException" for kind in type(error).__mro__) and hasattr(error, "show")


OPTIONAL_VALUES = {"--ray": "local"}  # options whose value may be left out (typer has no such options)


def fill_optional_values(args: list[str]) -> list[str]:
    """`--ray` at the end or before another option means `--ray=local`."""
    filled = []
    for position, arg in enumerate(args):
        following = args[position + 1] if position + 1 < len(args) else None
        if arg in OPTIONAL_VALUES and (following is None or following.startswith("-")):
            arg = f"{arg}={OPTIONAL_VALUES[arg]}"
        filled.append(arg)
    return filled


def main() -> None:
    """Console entry point: user mistakes become one line and exit code 1, no traceback."""
    from tutortoietts.errors import UserError

    debug = debug_enabled()
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    sys.argv[1:] = fill_optional_values(sys.argv[1:])
    _register()
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        # prog_name: the usage line names the command, also under `python -m tutortoietts.cli`.
        code = app(standalone_mode=False, prog_name="tutortoietts")
        # Typer turns Ctrl-C into an exit code of 130 and, outside standalone mode, returns it.
        if code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as error:
        if debug:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted: finished chunks are saved; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("stopped (SIGTERM): finished chunks are saved; run the same command again to resume", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except Exception as error:
        if is_click_error(error):  # a usage error: the usage line and click's message, exit 2 (1 for the few others)
            error.show()
            sys.exit(error.exit_code)
        if debug:
            raise
        print(f"error: {type(error).__name__}: {one_line(error)} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
