"""Config type checks that YAML and Python make easy to get wrong: booleans are ints in Python, `yes` is True in YAML 1.1;
and the GRPO batch: the release's 8 prompts per optimizer step, by default and in every shipped profile."""
import re
from pathlib import Path

import pytest

from aurora_nb.config import AuroraConfig, ConfigError, apply_overrides, config_from_dict, get_config


@pytest.mark.parametrize("override, message", [
    ("seed=true", "seed: expected int, got True"),
    ("model.lora.r=yes", "model.lora.r: expected int"),
    ("stages.sft.lr=false", "stages.sft.lr: expected float"),
    ("stages.grpo.kl_beta=on", "stages.grpo.kl_beta: expected float"),
])
def test_int_and_float_fields_reject_booleans(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(AuroraConfig(), [override])


def test_bool_fields_stay_bool_and_numbers_still_coerce():
    c = apply_overrides(AuroraConfig(), ["model.lora.enabled=no", "stages.sft.lr=1", "stages.grpo.lr=2e-5"])
    assert c.model.lora.enabled is False and c.stages.sft.lr == 1.0 and isinstance(c.stages.sft.lr, float)
    assert c.stages.grpo.lr == 2e-5
    with pytest.raises(ConfigError, match="model.lora.enabled: expected bool"):
        config_from_dict(AuroraConfig, {"model": {"lora": {"enabled": 1}}})
    with pytest.raises(ConfigError, match="model.lora.scope: expected one of 'official', 'llm'"):
        apply_overrides(AuroraConfig(), ["model.lora.scope=audio"])


def test_grpo_default_takes_the_releases_8_prompts_per_optimizer_step_on_one_gpu():
    g = AuroraConfig().stages.grpo  # the release: 1 prompt per GPU x accumulation 4 x 2 GPUs
    assert g.batch_size * g.grad_accum == 8


PROFILES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("full-*x*.yaml"))


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_shipped_profiles_take_8_grpo_prompts_per_optimizer_step(path):
    gpus = int(re.match(r"full-(\d+)x", path.stem).group(1))
    g = get_config(path=path).stages.grpo
    assert g.batch_size * g.grad_accum * gpus == 8, (path.name, g.batch_size, g.grad_accum, gpus)


def test_the_profiles_are_shipped():
    assert [p.stem for p in PROFILES] == ["full-1x24gb", "full-1x80gb", "full-8x80gb"]


def test_the_tiny_preset_builds_from_any_working_directory(tmp_path):
    "A script run outside the checkout finds the tiny preset's files in the checkout the package is installed from."
    import subprocess, sys
    code = ("from aurora_nb.config import get_config, path_candidates\n"
            "from aurora_nb.model import build_model\n"
            "m = build_model(get_config('tiny'))\n"
            "print(type(m).__name__, len(m.tokenizer))\n")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("AuroraModel "), r.stdout
