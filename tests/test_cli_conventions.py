"""CLI conventions: usage errors are click's (usage line, message, exit 2); domain errors are one `error:` line, exit 1."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from tests.cli_support import cli, cli_in_process, one_error_line
from tutortoietts import cli as cli_module
from tutortoietts.errors import UserError

# (arguments, the words of click's message): an unknown option, a missing argument, a value of the wrong type,
# an unknown command.
USAGE_ERRORS = [
    (["generate", "{book}", "--fmt", "mp3"], "No such option: --fmt"),
    (["generate"], "Missing argument"),
    (["generate", "{book}", "--seed", "abc"], "Invalid value for '--seed'"),
    (["generat", "{book}"], "No such command 'generat'"),
    (["jobs", "--nope"], "No such option: --nope"),
]


@pytest.fixture(scope="module")
def app():
    cli_module._register()
    return cli_module.app


@pytest.fixture
def book(tmp_path):
    path = tmp_path / "book.md"
    path.write_text("# A\n\nHello there.\n")
    return path


def _args(args, book):
    return [str(book) if arg == "{book}" else arg for arg in args]


@pytest.mark.parametrize("args, message", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_with_cli_runner(app, book, args, message):
    result = CliRunner().invoke(app, _args(args, book))
    print(result.output)
    assert result.exit_code == 2, result.output
    assert "Usage: " in result.output and message in result.output
    assert "error: " not in result.output and "Traceback" not in result.output


def test_domain_error_with_cli_runner_is_not_a_usage_error(app, tmp_path):
    """Inside the app a user mistake is a UserError (exit 1); the entry point makes it one line (below)."""
    result = CliRunner().invoke(app, ["presets", "ultra_fastest"])
    assert result.exit_code == 1
    assert isinstance(result.exception, UserError) and "unknown preset 'ultra_fastest'" in str(result.exception)
    assert "Usage: " not in result.output


@pytest.mark.parametrize("args, message", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_through_the_entry_point(book, args, message, monkeypatch, capsys):
    result = cli_in_process(*_args(args, book), monkeypatch=monkeypatch, capsys=capsys)
    print(result.stderr)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("Usage: tutortoietts"), lines
    assert lines[-1].startswith("Error: ") and message in lines[-1], lines
    assert not result.stdout and "Traceback" not in result.stderr


def test_option_without_its_value_is_a_usage_error_too(book, monkeypatch, capsys):
    """click words this one without the usage line (the click package does the same); still exit 2."""
    result = cli_in_process("generate", book, "--format", monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Error: Option '--format' requires an argument."


@pytest.mark.parametrize("args, words", [
    (["generate", "{missing}", "--voice", "emma"], "manuscript not found"),
    (["generate", "{book}", "--voice", "emma", "--format", "ogg"], "unknown --format 'ogg'"),
    (["generate", "{book}", "--voice", "emma", "--set", "top_p"], "--set wants key=value"),
    (["generate", "{book}"], "--voice"),
])
def test_domain_errors_through_the_entry_point(book, tmp_path, args, words, monkeypatch, capsys):
    args = [str(tmp_path / "missing.md") if arg == "{missing}" else arg for arg in _args(args, book)]
    line = one_error_line(cli_in_process(*args, monkeypatch=monkeypatch, capsys=capsys))  # exit 1, one line
    assert words in line and "Usage:" not in line


def test_click_errors_are_recognised_whichever_click_raised_them():
    """typer from 0.26 on raises its own copy of click's exceptions; the click package's count too."""
    import click

    assert cli_module.is_click_error(click.UsageError("x"))
    assert cli_module.is_click_error(typer.BadParameter("x"))  # typer's own (vendored in typer >= 0.26)
    assert typer.BadParameter("x").exit_code == 2
    assert not cli_module.is_click_error(UserError("x")) and not cli_module.is_click_error(ValueError("x"))


def test_mistyped_option_in_a_real_process(workspace, book):
    """What a shell sees: `generate book.md --fmt mp3` prints the usage line and click's message, exit 2."""
    result = cli("generate", book, "--fmt", "mp3", env=workspace["env"], check=False)
    print(result.stderr)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("Usage: tutortoietts generate [OPTIONS]"), lines
    assert lines[-1].startswith("Error: No such option: --fmt"), lines
    assert not result.stdout and "Traceback" not in result.stderr
