"""Prompt-length settings: `data.system_prompt` (official / none / a text) and `data.llm_audio_seconds` really change
what the LLM reads, the defaults leave the released prompt unchanged, and every module builds its chats from the run's
config (`cot.chat_builder`)."""
import importlib
import inspect
import pickle
import types

import numpy as np
import pytest
import torch

from aurora_nb.config import ConfigError, apply_overrides, get_config
from aurora_nb.cot import SYSTEM_PROMPT, build_messages, chat_builder, system_message, teacher_answer
from aurora_nb.model import AuroraCollator, build_processor, llm_audio

torch.set_num_threads(2)


def _item(seed=0):
    rng = np.random.default_rng(seed)
    return dict(frames=rng.integers(0, 255, (10, 48, 64, 3), dtype=np.uint8),
                audio=(rng.standard_normal(160000) * 0.1).astype(np.float32), masks=np.zeros((10, 48, 64), np.uint8),
                expression="The object making a low-pitched, pulsing sound.", category="gong")


@pytest.fixture(scope="module")
def proc():
    return build_processor(get_config("tiny"))


def _batch(proc, **overrides):
    cfg = get_config("tiny", overrides)
    it = _item()
    return AuroraCollator(proc, cfg, build_messages=chat_builder(cfg))([{**it, "answer": teacher_answer(it["category"])}])


def _count(batch, proc, token):
    return int((batch["input_ids"] == proc.tokenizer.convert_tokens_to_ids(token)).sum())


def test_defaults_keep_the_released_prompt():
    for preset in ("full", "tiny"):
        cfg = get_config(preset)
        assert cfg.data.system_prompt == "official" and cfg.data.llm_audio_seconds == 0
        assert chat_builder(cfg)(" A gong. ") == build_messages(" A gong. ")
        assert chat_builder(cfg)("x")[0] == {"role": "system", "content": SYSTEM_PROMPT}


def test_system_prompt_settings():
    cfg = get_config("tiny")
    assert [m["role"] for m in chat_builder(apply_overrides(cfg, ["data.system_prompt=none"]))("x")] == ["user"]
    own = chat_builder(apply_overrides(cfg, ["data.system_prompt=Find the object."]))("x")
    assert own[0] == {"role": "system", "content": "Find the object."}
    assert own[1] == build_messages("x")[1]  # the user turn is untouched
    pickle.loads(pickle.dumps(chat_builder(cfg)))  # DataLoader workers receive it
    with pytest.raises(ValueError, match="data.system_prompt"): system_message("  ")


def test_no_system_message_is_a_shorter_prompt(proc):
    full, none = _batch(proc), _batch(proc, **{"data.system_prompt": "none"})
    n_full, n_none = (int(b["attention_mask"].sum()) for b in (full, none))
    assert n_full - n_none > 50, (n_full, n_none)  # the released message is ~80 words
    assert (full["labels"] != -100).sum() == (none["labels"] != -100).sum()  # the same answer is supervised


def test_llm_audio_seconds_shortens_the_audio(proc):
    cfg = get_config("tiny", {"data.llm_audio_seconds": 4})
    assert len(llm_audio(np.zeros(160000), cfg)) == 4 * 16000
    assert len(llm_audio(np.zeros(160000), get_config("tiny"))) == 160000
    whole, short = _count(_batch(proc), proc, "<|AUDIO|>"), _count(_batch(proc, **{"data.llm_audio_seconds": 4}), proc, "<|AUDIO|>")
    assert whole == 250 and short == 100, (whole, short)  # 25 audio tokens per second
    assert "feature_attention_mask" in _batch(proc, **{"data.llm_audio_seconds": 4})


def test_wrong_types_are_refused():
    with pytest.raises(ConfigError): get_config("tiny", {"data.llm_audio_seconds": "four"})


@pytest.mark.parametrize("module", ["evaluate", "sft", "reflect", "grpo"])
def test_every_module_builds_chats_from_the_config(module):
    "No module hands the collator or `predict` the bare released prompt: chats follow the run's data.system_prompt."
    src = inspect.getsource(importlib.import_module(f"aurora_nb.{module}"))
    assert "build_messages=build_messages" not in src and "chat_builder(" in src


def test_evaluation_prompts_follow_the_models_config(monkeypatch):
    import aurora_nb.evaluate as ev
    seen = []
    def fake_predict(model, items, max_new_tokens=None, *, build_messages):
        seen.append(build_messages("x"))
        return [types.SimpleNamespace(mask_logits=torch.zeros(10, 48, 64), text="It is gong [SEG].", own_text="It is gong [SEG].",
                                      used_fallback=False)
                for _ in items]
    monkeypatch.setattr(ev, "predict", fake_predict)
    model = types.SimpleNamespace(config=get_config("tiny", {"data.system_prompt": "none"}))
    ev._predict_logits(model, [_item()], None)
    assert [m["role"] for m in seen[0]] == ["user"]
