"""The `aurora-nb` console script, run as a user runs it: a subprocess of the installed entry point."""
import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aurora_nb.cli import SUBCOMMANDS, build_parser, is_built, main, parse_subcommand

EXE = shutil.which("aurora-nb", path=str(Path(sys.executable).parent)) or shutil.which("aurora-nb")
ROOT = Path(__file__).resolve().parents[1]
WARNING = re.compile(r"\b\w*Warning\b")  # FutureWarning, UserWarning, DeprecationWarning, ...


def cli(*args, cwd=None):
    "Run `aurora-nb ARGS` and return the completed process (text mode)."
    assert EXE, "the aurora-nb console script is not installed in this environment"
    return subprocess.run([EXE, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_lists_every_planned_subcommand():
    r = cli("--help")
    assert r.returncode == 0, r.stderr
    for name in ["synth", "check-data", "cot", "train", "eval", "infer", "run", "bench", "config"]:
        assert name in r.stdout and name in SUBCOMMANDS


def _options(name):
    "Every option string and positional name of subcommand `name`'s parser, with its help text."
    return [(a.option_strings[-1] if a.option_strings else a.metavar or a.dest, a.help) for a in build_parser(name)._actions]


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_option_is_documented_in_help(name):
    r = cli(name, "--help")
    assert r.returncode == 0, r.stderr
    for opt, help in _options(name):
        assert help and help != argparse.SUPPRESS, f"aurora-nb {name}: {opt} has no help text"
        assert opt in r.stdout, f"aurora-nb {name} --help does not list {opt}"


def test_eval_and_infer_parsers_have_the_planned_interface():
    assert {"--model", "--predictor", "--split", "--data", "--out", "--audio", "--limit", "--batch-size", "--preset", "--config",
            "KEY=VALUE"} <= {o for o, _ in _options("eval")}
    assert {"--model", "--video", "--frames", "--audio", "--expression", "--out", "--allow-silent"} <= {o for o, _ in _options("infer")}


def test_version_matches_package():
    import aurora_nb
    r = cli("--version")
    assert r.returncode == 0 and aurora_nb.__version__ in r.stdout


def test_no_arguments_prints_help_and_fails():
    r = cli()
    assert r.returncode == 2 and "SUBCOMMAND" in r.stdout


@pytest.mark.parametrize("name", [n for n in SUBCOMMANDS if not is_built(n)])
def test_unbuilt_subcommands_fail_loudly(name):
    r = cli(name)
    assert r.returncode != 0
    assert "not built yet" in r.stderr and ".md" not in r.stderr


def test_unknown_subcommand_suggests_the_close_one():
    r = cli("confg")
    assert r.returncode == 2 and "did you mean 'config'" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["config", "--preset", "full", "--config", "x.yaml"], "argument --config: not allowed with argument --preset"),
    (["run", "--config", "x.yaml", "--preset", "tiny"], "argument --preset: not allowed with argument --config"),
    (["eval", "--model", "m", "--predictor", "empty", "--split", "val"], "argument --predictor: not allowed with argument --model"),
    (["eval", "--predictor", "empty", "--split", "test"], "argument --split: invalid choice: 'test'"),
    (["infer", "--model", "m", "--frames", "f", "--expression", "x"], "--frames needs --audio"),
    (["infer", "--model", "m", "--video", "v.mp4", "--audio", "a.wav", "--expression", "x"], "--audio goes with --frames"),
    (["infer", "--model", "m", "--video", "v.mp4", "--frames", "f", "--expression", "x"], "not allowed with argument"),
    (["synth", "--out", "x", "--videos", "0"], "--videos must be at least 1"),
    (["bench", "--gpu-check", "--frame-size", "0"], "--frame-size must be at least 1"),
    (["bench", "--gpu-check", "--rows", "0"], "--rows must be at least 1"),
    (["bench", "--gpu-check", "--frame-size", "1280x720"], "argument --frame-size: invalid int value"),
])
def test_conflicting_or_bad_flags_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as e: parse_subcommand(args[0], args[1:])  # the parser, whether or not the handler is built
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and f"usage: aurora-nb {args[0]}" in err, err


def test_conflicting_flags_exit_2_from_the_console_script():
    r = cli("config", "--preset", "full", "--config", "x.yaml")
    assert r.returncode == 2 and "argument --config: not allowed with argument --preset" in r.stderr, r.stderr


def test_config_applies_overrides_and_round_trips(tmp_path):
    r = cli("config", "--preset", "tiny", "stages.grpo.lr=2e-5", "model.lora.r=4")
    assert r.returncode == 0, r.stderr
    d = yaml.safe_load(r.stdout)
    assert d["stages"]["grpo"]["lr"] == 2e-5 and d["model"]["lora"]["r"] == 4 and d["preset"] == "tiny"
    (tmp_path / "c.yaml").write_text(r.stdout)
    r2 = cli("config", "--config", str(tmp_path / "c.yaml"))
    assert r2.returncode == 0 and yaml.safe_load(r2.stdout) == d


def test_config_without_preset_or_file_is_the_tiny_preset():
    r = cli("config")
    assert r.returncode == 0 and yaml.safe_load(r.stdout)["preset"] == "tiny"


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


def test_run_plan_names_every_step_and_writes_nothing(tmp_path):
    r = cli("run", "--preset", "tiny", "--data", "data/synth", "--out", str(tmp_path / "demo"), "--plan", cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    for step in ("benchmark and data check", "stage 0: teacher", "CoT data for stage 1", "stage 1: CoT SFT + distillation",
                 "stage 2: reflective SFT", "stage 3: GRPO", "reference predictors", "data: OK"):
        assert step in r.stdout, step
    assert not (tmp_path / "demo").exists()


def test_run_plan_on_missing_data_fails_naming_the_file(tmp_path):
    r = cli("run", "--data", "/nonexistent", "--out", str(tmp_path / "demo"), "--plan", cwd=ROOT)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "/nonexistent/metadata.csv" in r.stdout and "missing-csv" in r.stdout


def test_importing_the_cli_imports_no_heavy_library():
    "The proxy for a fast --help: the parsers and the registry need the standard library only."
    probe = ("import sys, contextlib, io, aurora_nb.cli as c\n"
             "for n in c.SUBCOMMANDS:\n"
             "    with contextlib.redirect_stdout(io.StringIO()):\n"
             "        try: c.main([n, '--help'])\n"
             "        except SystemExit: pass\n"
             "print(sorted(m for m in ('torch', 'cv2', 'librosa', 'transformers', 'numpy', 'pandas', 'av') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"importing aurora_nb.cli pulled in {r.stdout.strip()}"


def test_synth_errors_speak_the_command_line(tmp_path):
    args = ["synth", "--out", str(tmp_path / "b"), "--videos", "4", "--size", "32", "--sample-rate", "8000", "--no-progress"]
    assert cli(*args).returncode == 0
    r = cli(*args)
    assert r.returncode == 2 and "--force" in r.stderr and "overwrite=True" not in r.stderr, r.stderr
    r = cli("synth", "--out", str(tmp_path / "c"), "--videos", "2", "--no-progress")
    assert r.returncode == 2 and "--videos 2" in r.stderr and "n_videos" not in r.stderr, r.stderr


def test_cli_prints_no_third_party_warning(tmp_path):
    "A clean run shows no warning a user would have to learn to ignore."
    for args in [["synth", "--out", str(tmp_path / "s"), "--videos", "4", "--size", "32", "--sample-rate", "8000", "--no-progress"],
                 ["check-data", str(tmp_path / "s"), "--no-progress"],
                 ["run", "--data", str(tmp_path / "s"), "--out", str(tmp_path / "runs"), "--plan"]]:
        r = cli(*args, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        assert not WARNING.search(r.stderr), f"aurora-nb {args[0]} printed: {r.stderr[-1500:]}"


@pytest.mark.parametrize("stage, target", [("reflect", "aurora_nb.reflect"), ("grpo", "aurora_nb.grpo"),
                                           ("teacher", "aurora_nb.sft"), ("sft", "aurora_nb.sft")])
def test_train_dispatches_each_stage_to_its_trainer(stage, target, monkeypatch, tmp_path):
    "`aurora-nb train --stage S` reaches the handler of S's own chapter (reflect builds its data before the SFT trainer)."
    import importlib
    mod = importlib.import_module(target)
    name = "train_grpo_main" if stage == "grpo" else "train_main"
    seen = []
    monkeypatch.setattr(mod, name, lambda args: seen.append(args.stage) or 0)
    assert main(["train", "--stage", stage, "--out", str(tmp_path / "run")]) == 0
    assert seen == [stage]
