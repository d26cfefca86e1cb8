import subprocess
import sys

import pytest

from searchr1.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--params" in out and "--set KEY=VALUE" in out


def test_bad_setting_exits_2_with_the_key_named(capsys):
    assert main(["config", "--set", "retrieval.topk=lots"]) == 2
    assert "retrieval.topk" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "searchr1.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "pipeline" in out.stdout
