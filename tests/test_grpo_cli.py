"""`aurora-nb train --stage grpo`: the SFT stages' run-folder conventions (model/, config beside it, resume on rerun,
settings from --init plus overrides, conflicting flags refused), the stage's config fields, and two gloo processes
(the session's shared run, tests/conftest.py's `grpo_runs`)."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from aurora_nb.cli import main
from aurora_nb.config import ConfigError, get_config, load_config
from aurora_nb.grpo import AuroraGRPOTrainer, grpo_config
from aurora_nb.model import build_model, from_pretrained
from aurora_nb.rewards import register_reward, reward_weights
from aurora_nb.sft import MODEL_DIR, RUN_CONFIG

BIN = Path(sys.executable).parent
torch.set_num_threads(2)
SHORT = ["model.trainable=lora", "model.lora.dropout=0.0", "stages.grpo.max_steps=2", "stages.grpo.save_steps=1",
         "stages.grpo.max_new_tokens=8", "stages.grpo.lr=1e-2"]


@pytest.fixture(scope="module")
def stage2(tiny_model_dir):
    "A stand-in stage-2 run folder: the session's random tiny model (seed 0) in DIR/model. Shared: read it, never write into it."
    return tiny_model_dir


@register_reward("test_vowels", overwrite=True)
def _vowels(text, **_):
    "A reward with spread on a random model's text (the built-in ones are all 0 there: no policy signal)."
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / max(len(letters), 1)


@pytest.fixture
def vowels(monkeypatch):
    monkeypatch.setattr("aurora_nb.grpo.reward_weights", lambda st: {**reward_weights(st), "test_vowels": 1.0})


def _train(stage2, out, *extra):
    return main(["train", "--stage", "grpo", "--init", str(stage2), "--out", str(out), "--no-progress", *SHORT, *extra])


def test_settings_come_from_the_init_model_plus_overrides(stage2, tmp_path):
    c = grpo_config(stage2, overrides=["model.trainable=lora", "stages.grpo.mask_loss_on=best"])
    assert c.preset == "tiny" and c.stages.grpo.mask_loss_on == "best" and c.model.trainable == "lora"
    with pytest.raises(ConfigError, match="architecture comes from --init"):
        grpo_config(stage2, overrides=["model.trainable=lora", "model.prompt_dim=16"])
    with pytest.raises(ConfigError, match="model.trainable=lora"):  # β > 0 needs adapters: refused before any work
        grpo_config(stage2, overrides=["stages.grpo.kl_beta=0.04"])
    assert grpo_config(stage2).model.trainable == "all"  # the tiny preset: β = 0, every weight trains
    saved = load_config(stage2 / MODEL_DIR / "aurora_config.yaml")
    saved.stages.grpo.max_steps = 7; saved.model.prompt_dim = 999  # a run config whose architecture is not the init's
    from aurora_nb.config import save_config
    save_config(saved, tmp_path / "other.yaml")
    c = grpo_config(stage2, config=tmp_path / "other.yaml", overrides=["stages.grpo.lr=3e-4"])
    assert c.stages.grpo.max_steps == 7 and c.stages.grpo.lr == 3e-4 and c.model.prompt_dim == get_config("tiny").model.prompt_dim
    assert grpo_config(stage2, preset="full", overrides=["model.trainable=lora"]).stages.grpo.max_steps == get_config("full").stages.grpo.max_steps
    with pytest.raises(ConfigError, match="mask_loss_on"):
        grpo_config(stage2, overrides=["stages.grpo.mask_loss_on=some"])


def test_trainer_reads_filter_and_mask_target_from_the_stage(stage2):
    c = get_config("tiny", {"model.trainable": "lora", "stages.grpo.filter_zero_spread": True, "stages.grpo.mask_loss_on": "best"})
    from transformers import TrainingArguments
    tr = AuroraGRPOTrainer(build_model(c), TrainingArguments("/tmp/unused-grpo", use_cpu=True, report_to=[]), [])
    assert tr.filter_zero_spread is True and tr.mask_loss_on == "best"
    tr = AuroraGRPOTrainer(build_model(c), TrainingArguments("/tmp/unused-grpo", use_cpu=True, report_to=[]), [],
                           mask_loss_on="all")  # an explicit argument wins
    assert tr.mask_loss_on == "all"


def test_conflicting_flags_are_refused(stage2, tmp_path, capsys):
    assert main(["train", "--stage", "grpo", "--out", str(tmp_path / "a"), *SHORT]) == 2
    assert "--init" in capsys.readouterr().err
    assert _train(stage2, tmp_path / "b", "--teacher", str(stage2)) == 2
    assert "--teacher" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_kill_and_rerun_resumes_to_the_weights_of_an_uninterrupted_run(stage2, tmp_path, monkeypatch, capsys, vowels):
    assert _train(stage2, tmp_path / "a") == 0
    assert "stage grpo at step 2" in capsys.readouterr().out
    step = AuroraGRPOTrainer.training_step

    def killed(self, *a, **kw):  # dies in step 2, after checkpoint-1 was written
        if self.state.global_step == 1: raise KeyboardInterrupt("killed")
        return step(self, *a, **kw)
    monkeypatch.setattr(AuroraGRPOTrainer, "training_step", killed)
    with pytest.raises(KeyboardInterrupt):
        _train(stage2, tmp_path / "b")
    assert (tmp_path / "b" / "checkpoint-1").is_dir() and not (tmp_path / "b" / MODEL_DIR).exists()
    monkeypatch.setattr(AuroraGRPOTrainer, "training_step", step)
    assert _train(stage2, tmp_path / "b") == 0  # the same command again
    hist = json.loads((tmp_path / "b" / "log_history.json").read_text())
    assert [h["step"] for h in hist if "loss" in h] == [1, 2]  # step 1 from the checkpoint, step 2 after the rerun
    assert load_config(tmp_path / "b" / RUN_CONFIG).stages.grpo.max_steps == 2
    sa = from_pretrained(tmp_path / "a" / MODEL_DIR).state_dict()
    sb = from_pretrained(tmp_path / "b" / MODEL_DIR).state_dict()
    assert sa.keys() == sb.keys() and any("lora_A" in n for n in sa)
    for n in sa: torch.testing.assert_close(sa[n], sb[n], atol=1e-6, rtol=0, msg=n)
    s0 = from_pretrained(stage2 / MODEL_DIR).state_dict()
    lora = [n for n in sa if "lora_B" in n]
    assert any(sa[n].abs().sum() > 0 for n in lora)  # the fresh adapters (B = 0 at the start) trained
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): t for n, t in sa.items()}
    sam = [n for n in s0 if n in base and "sam." in n]
    frozen = [n for n in sam if "mask_decoder." not in n]  # SAM's encoders: frozen under model.trainable=lora
    assert frozen and all(torch.equal(base[n], s0[n]) for n in frozen)  # frozen stage-2 weights kept
    assert any(not torch.equal(base[n], s0[n]) for n in sam if "mask_decoder." in n)  # the mask losses (all G rollouts) train it
    capsys.readouterr()
    assert _train(stage2, tmp_path / "b", "stages.grpo.lr=1e-3") == 2  # a different run in the same folder is refused
    assert "other settings" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("accelerate", path=str(BIN)) is None, reason="accelerate CLI not installed")
def test_two_processes_stay_in_step_and_save_one_model(grpo_runs):
    "Two gloo processes save one model and one checkpoint; that process 0's weights equal one process's is test_scale's check."
    out = grpo_runs["two"]
    assert [p.name for p in out.iterdir() if p.name.startswith("checkpoint-")] == ["checkpoint-2"]
    # both processes reached the last step's checkpoint (a single process writes one rng_state.pth)
    assert sorted(p.name for p in (out / "checkpoint-2").glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    from_pretrained(out / MODEL_DIR)
    w0 = torch.load(out / "weights.pt")  # process 0's trainable weights
    assert any(w0[n].abs().sum() > 0 for n in w0 if "lora_B" in n)  # it trained (B starts at 0)


def test_train_dispatches_grpo_to_its_trainer_and_stages_0_1_to_sft(monkeypatch, tmp_path):
    import aurora_nb.grpo, aurora_nb.sft
    seen = []
    monkeypatch.setattr(aurora_nb.sft, "train_main", lambda a: seen.append(("sft", a.stage)) or 0)
    monkeypatch.setattr(aurora_nb.grpo, "train_grpo_main", lambda a: seen.append(("grpo", a.stage)) or 0)
    for stage in ("teacher", "sft", "grpo"):
        assert main(["train", "--stage", stage, "--out", str(tmp_path)]) == 0
    assert seen == [("sft", "teacher"), ("sft", "sft"), ("grpo", "grpo")]


def test_saved_model_keeps_the_merged_stage2_weights_under_fresh_adapters(tmp_path):
    "Without random base weights in the file (full scale), the merged stage-2 weights must be saved beside the adapters."
    from safetensors import safe_open
    from aurora_nb.grpo import _save_grpo_model
    from aurora_nb.model import apply_trainable_policy
    c = get_config("tiny", {"model.trainable": "lora"})
    model = build_model(c)
    model.thinker = model.thinker.merge_and_unload()
    apply_trainable_policy(model, verbose=False)
    model.config.model.from_scratch = False  # as at full scale: save_pretrained writes only what trains
    _save_grpo_model(model, tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f: keys = set(f.keys())
    merged = {n for n, _ in model.named_parameters() if ".base_layer." in n}
    assert merged and merged <= keys and any("lora_A" in k for k in keys)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in merged)  # still frozen afterwards
