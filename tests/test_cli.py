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


def test_profile_applies_over_params_and_under_set(tmp_path, monkeypatch, capsys):
    import yaml

    profile = tmp_path / "fast.yaml"
    profile.write_text("train:\n  steps: 7\n  lr: 1.0e-5\nevaluation:\n  methods: [rag]\n")
    assert main(["config", "--profile", str(profile), "--set", "train.lr=3e-5"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["train"]["steps"] == 7 and resolved["train"]["lr"] == 3e-5  # --set wins over the profile
    assert resolved["evaluation"]["methods"] == ["rag"]


def test_named_profile_is_read_from_profiles_and_a_missing_one_is_a_clear_error(capsys, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # the project root holds profiles/
    assert main(["config", "--profile", "long"]) == 0
    assert "steps: 250" in capsys.readouterr().out
    assert main(["config", "--profile", "nope"]) == 2
    err = capsys.readouterr().err
    assert "profile 'nope'" in err and "long" in err


def test_named_profile_is_found_beside_the_settings_file_from_a_sub_folder(tmp_path, capsys, monkeypatch):
    # A stage run in a work folder (e.g. runs/check-world) with --params ../../params.yaml: `--profile ppo`
    # means the project's profiles/ppo.yaml, not a profiles/ folder in the work folder.
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "fast.yaml").write_text("train:\n  steps: 7\n")
    (tmp_path / "params.yaml").write_text("seed: 3\n")
    work = tmp_path / "runs" / "other"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert main(["config", "--params", "../../params.yaml", "--profile", "fast"]) == 0
    assert "steps: 7" in capsys.readouterr().out
    assert main(["config", "--profile", "fast"]) == 2  # without the settings file's folder there is none here
    assert "profile 'fast'" in capsys.readouterr().err


def test_every_shipped_profile_gives_valid_settings(capsys, monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    for profile in sorted(p.stem for p in (root / "profiles").glob("*.yaml")):
        assert main(["config", "--profile", profile]) == 0, profile
    assert "critic_warmup: 3" in capsys.readouterr().out  # the ppo profile's critic settings reach the settings
