"""Config type checks that YAML and Python make easy to get wrong: booleans are ints in Python, `yes` is True in YAML 1.1."""
import pytest

from aurora_nb.config import AuroraConfig, ConfigError, apply_overrides, config_from_dict


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
