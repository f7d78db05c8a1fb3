"""The `aurora-nb` console script, run as a user runs it: a subprocess of the installed entry point."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aurora_nb.cli import SUBCOMMANDS

EXE = shutil.which("aurora-nb", path=str(Path(sys.executable).parent)) or shutil.which("aurora-nb")


def cli(*args, cwd=None):
    "Run `aurora-nb ARGS` and return the completed process (text mode)."
    assert EXE, "the aurora-nb console script is not installed in this environment"
    return subprocess.run([EXE, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_lists_every_planned_subcommand():
    r = cli("--help")
    assert r.returncode == 0, r.stderr
    for name in ["synth", "check-data", "cot", "train", "eval", "infer", "run", "bench", "config"]:
        assert name in r.stdout and name in SUBCOMMANDS


def test_version_matches_package():
    import aurora_nb
    r = cli("--version")
    assert r.returncode == 0 and aurora_nb.__version__ in r.stdout


def test_no_arguments_prints_help_and_fails():
    r = cli()
    assert r.returncode == 2 and "SUBCOMMAND" in r.stdout


@pytest.mark.parametrize("name", [n for n, (_, target) in SUBCOMMANDS.items() if target is None])
def test_unbuilt_subcommands_fail_loudly(name):
    r = cli(name)
    assert r.returncode != 0
    assert "not built yet" in r.stderr


def test_unknown_subcommand_suggests_the_close_one():
    r = cli("confg")
    assert r.returncode == 2 and "did you mean 'config'" in r.stderr


def test_config_applies_overrides_and_round_trips(tmp_path):
    r = cli("config", "--preset", "tiny", "stages.grpo.lr=2e-5", "model.lora.r=4")
    assert r.returncode == 0, r.stderr
    d = yaml.safe_load(r.stdout)
    assert d["stages"]["grpo"]["lr"] == 2e-5 and d["model"]["lora"]["r"] == 4 and d["preset"] == "tiny"
    (tmp_path / "c.yaml").write_text(r.stdout)
    r2 = cli("config", "--config", str(tmp_path / "c.yaml"))
    assert r2.returncode == 0 and yaml.safe_load(r2.stdout) == d


@pytest.mark.parametrize("override,message", [
    ("stages.grpo.kl_bta=0.1", "unknown key 'stages.grpo.kl_bta'"),
    ("stages.grpo.num_generations=many", "stages.grpo.num_generations: expected int"),
    ("model.dtype=fp8", "model.dtype: expected one of"),
])
def test_config_errors_name_the_key(override, message):
    r = cli("config", override)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_bad_config_file_is_named(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("stages:\n  grpo:\n    lr: [1, 2]\n")
    r = cli("config", "--config", str(p))
    assert r.returncode == 2 and "broken.yaml" in r.stderr and "stages.grpo.lr: expected float" in r.stderr


def test_run_writes_its_config_and_says_what_it_did_not_run(tmp_path):
    r = cli("run", "--preset", "tiny", f"output_dir={tmp_path}", "--name", "demo", cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "demo" / "config.yaml").is_file()
    status = (tmp_path / "demo" / "STATUS.txt").read_text()
    unbuilt = [n for n, (_, t) in SUBCOMMANDS.items() if t is None]
    if unbuilt:
        assert "not built yet" in r.stdout and "No model was trained" in r.stdout
    assert status.startswith("ran:")
