"""The ov3dseg entry point: subcommand table and dispatch."""
import importlib.util

import pytest

from ov3dseg_core import cli


def test_every_subcommand_module_exists():
    missing = [name for name, (module, _) in cli.COMMANDS.items() if importlib.util.find_spec(module) is None]
    assert not missing, f"subcommands without a module: {missing}"


def test_unknown_command_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "fuse-sample" in out and "replay" in out
