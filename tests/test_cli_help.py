"""Every command's --help runs without error and lists every option the command takes."""

import pytest
import typer
from typer.testing import CliRunner

from calib.cli import app

runner = CliRunner()


def commands(group, path: tuple[str, ...] = ()):
    """(name path, command) of every command and group below `group` (typer's click objects, by duck typing)."""
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if hasattr(cmd, "commands"):
            yield from commands(cmd, (*path, name))


ALL = list(commands(typer.main.get_command(app)))


def test_the_command_tree_is_complete():
    names = {" ".join(p) for p, _ in ALL}
    assert {"study run", "study report", "study plot", "study check", "quantize", "generate", "zoo eval"} <= names


@pytest.mark.parametrize("path,cmd", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_help_lists_every_option(path, cmd):
    result = runner.invoke(app, [*path, "--help"], terminal_width=200, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert result.exception is None and "Usage" in result.output
    for param in cmd.params:
        if param.param_type_name == "option" and not param.hidden:
            assert any(opt in result.output for opt in param.opts), (path, param.opts)
        elif param.param_type_name == "argument" and not getattr(param, "hidden", False):
            assert (param.metavar or param.name).upper() in result.output.upper(), (path, param.name)
