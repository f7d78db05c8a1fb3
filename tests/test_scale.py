"""The scale chapter: launch files (committed = generated, accepted by accelerate's own parser), the full-size configs,
parameter counts and memory plan against built models, the GPU check's CPU run through the CLI, and two processes
training like one (SFT and GRPO, gloo on the CPU)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aurora_nb.cli import main
from aurora_nb.config import get_config
from aurora_nb.cot import chat_builder, cot_answer
from aurora_nb.data import RefAVSDataset
from aurora_nb.model import AuroraCollator, model_inputs, trainable_table
from aurora_nb.scale import (CHECK_STEPS, GIB, HARDWARE, QWEN_OMNI_3B, QWEN_OMNI_7B, SAM_VIT_H, STRATEGIES, build_model_quietly,
                             check_launch_config, full_size_overrides, hardware_config, launch_files, param_counts,
                             plan_memory, saved_activation_bytes, step_activations, unknown_size_keys)
from aurora_nb.sft import MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
torch.set_num_threads(2)
LORA = {"model.trainable": "lora", "model.freeze_sam_encoder": True, "model.dtype": "bfloat16"}


# Launch files

def test_committed_launch_files_are_what_the_code_writes():
    files = launch_files()
    committed = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*") if p.is_file())
    assert committed == sorted(files), "configs/ differs from launch_files(): run aurora_nb.scale.write_launch_configs('configs')"
    for rel, text in files.items():
        assert (ROOT / "configs" / rel).read_text() == text, f"configs/{rel} is stale"


@pytest.mark.parametrize("name,expect", [
    ("ddp", {"ACCELERATE_MIXED_PRECISION": "no"}),
    ("zero2-offload", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
                       "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}),
    ("zero3", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
               "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true"}),
    ("fsdp", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}),
    *[(name, {"ACCELERATE_MIXED_PRECISION": "no"}) for name in HARDWARE]])
def test_accelerate_accepts_each_launch_file(name, expect):
    env = check_launch_config(ROOT / "configs" / "accelerate" / f"{name}.yaml")
    assert expect.items() <= env.items(), env


def test_accelerate_refuses_a_misspelt_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs/accelerate/ddp.yaml").read_text().replace("num_processes", "num_proceses"))
    with pytest.raises(ValueError, match="num_proceses"): check_launch_config(bad)


def test_run_configs_load_as_their_machine_and_keep_the_official_batches():
    for name, hw in HARDWARE.items():
        cfg = get_config(path=ROOT / "configs" / f"full-{name}.yaml")
        assert cfg == hardware_config(name) and cfg.model.thinker == hw["thinker"]
        assert cfg.stages.grpo.batch_size * cfg.stages.grpo.grad_accum * hw["gpus"] == 8
        assert cfg.stages.sft.batch_size * cfg.stages.sft.grad_accum * hw["gpus"] * cfg.stages.sft.max_steps == 72_000


# Full-size configs and parameter counts

def test_full_sizes_are_fields_of_the_transformers_config_classes():
    assert unknown_size_keys(QWEN_OMNI_7B) == unknown_size_keys(QWEN_OMNI_3B) == unknown_size_keys(SAM_VIT_H, "sam") == []
    assert unknown_size_keys({**QWEN_OMNI_7B, "vision_config": {"layers": 32}}) == ["vision_config.layers"]


@pytest.mark.parametrize("over", [{}, LORA, {**LORA, "model.token_rows": "full"}, {"model.trainable": "lora", "model.lora.enabled": False},
                                  {**LORA, "model.lora.scope": "llm", "model.lora.r": 4}])
def test_param_counts_equal_the_built_tiny_model(over):
    cfg = get_config("tiny", over)
    assert param_counts(cfg).values.tolist() == trainable_table(build_model_quietly(cfg)).values.tolist()


def test_param_counts_equal_the_7b_model_built_on_the_meta_device():
    cfg = get_config("full", {**full_size_overrides("7b"), "model.tokenizer": "data/tokenizer"})
    with torch.device("meta"): model = build_model_quietly(cfg)
    counts = param_counts(cfg)
    assert counts.values.tolist() == trainable_table(model).values.tolist()
    assert counts.loc["total", "params"] == 9_585_456_176 and counts.loc["total", "trainable"] == 21_665_764


@pytest.mark.parametrize("over", [{}, LORA])
def test_gradient_and_adam_bytes_follow_the_counts(over):
    "One AdamW step: fp32 gradients and two fp32 moments for every weight that gets a gradient, as the plan counts."
    cfg = get_config("tiny", over)
    torch.manual_seed(0)
    model = build_model_quietly(cfg).train()
    it = RefAVSDataset(ROOT / "data" / "synth", "train")[0]
    batch = AuroraCollator(model.processor, cfg, build_messages=chat_builder(cfg))([{**it, "answer": cot_answer("Images: x. The target is dog.")}])
    model(**model_inputs(batch)).loss.backward()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    opt.step()
    plan = plan_memory(cfg, n_tokens=len(model.tokenizer))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert plan.trainable == trainable
    assert plan.static["weights"] == sum(p.nbytes for p in model.parameters())  # frozen in model.dtype, trainable fp32
    assert plan.static["gradients"] == sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    assert plan.static["optimizer states"] == sum(t.nbytes for s in opt.state.values() for k, t in s.items() if k != "step")
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)


# The memory plan

@pytest.mark.parametrize("stage", ["teacher", "sft", "grpo"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_plan_grows_with_batch_and_sequence_length(strategy, stage):
    cfg = get_config("full")
    for gc in (False, True):
        by_batch = [plan_memory(cfg, 8, strategy, stage, batch_size=b, gradient_checkpointing=gc).peak for b in (1, 2, 3, 8)]
        by_len = [plan_memory(cfg, 8, strategy, stage, seq_len=s, gradient_checkpointing=gc).peak for s in (256, 1024, 2048, 8192)]
        assert all(a < b for a, b in zip(by_batch, by_batch[1:])), by_batch
        assert all(a < b for a, b in zip(by_len, by_len[1:])), by_len


def test_strategies_shard_what_they_say():
    cfg = get_config("full", {"model.token_rows": "full"})  # the official trainable set: 1.1 B weights
    ddp, z2, z2o, z3, fsdp = (plan_memory(cfg, 8, s) for s in ("ddp", "zero2", "zero2_offload", "zero3", "fsdp"))
    assert z2.static["weights"] == ddp.static["weights"] and z2.static["gradients"] == ddp.static["gradients"] / 8
    assert z2.static["optimizer states"] == ddp.static["optimizer states"] * 12 / 8 / 8  # + ZeRO's fp32 copy, sharded
    assert z2o.static["optimizer states"] == 0 and z2o.cpu["optimizer states"] == z2.static["optimizer states"]
    assert z3.static["weights"] == fsdp.static["weights"] == ddp.static["weights"] / 8
    assert z3.step == ddp.step  # sharding never changes the activations
    assert not plan_memory(cfg, 1, "ddp").fits(24) and plan_memory(cfg, 1, "ddp").fits(80)


def test_checkpointing_keeps_one_input_per_layer():
    cfg = get_config("full")
    off, on = (step_activations(cfg, "sft", 1, 2000, gradient_checkpointing=g) for g in (False, True))
    assert on["LLM layers"] < off["LLM layers"] / 10 and on["LM head"] == off["LM head"]


def test_activation_model_matches_autograds_saved_tensors():
    "The plan's saved-tensor blocks against autograd's own count on one SFT forward of the tiny model (LoRA, bf16)."
    cfg = get_config("tiny", LORA)
    torch.manual_seed(0)
    model = build_model_quietly(cfg).train()
    it = RefAVSDataset(ROOT / "data" / "synth", "train")[0]
    batch = AuroraCollator(model.processor, cfg, build_messages=chat_builder(cfg))(
        [{**it, "answer": cot_answer("Images: three shapes. Audio: a hum. Reference: the hum. The target is drum.")}] * 2)
    measured = saved_activation_bytes(model, batch)
    planned = step_activations(cfg, "sft", 2, batch["input_ids"].shape[1], gradient_checkpointing=False,
                               frame_hw=it["frames"].shape[1:3], device="cpu", n_tokens=len(model.tokenizer))
    planned.pop("held outputs")
    for block in ("LLM layers", "LM head", "masks and losses"):
        assert abs(planned[block] / measured[block] - 1) < 0.05, (block, planned[block], measured[block])
    assert abs(sum(planned.values()) / measured["total"] - 1) < 0.1


# The GPU check and the bench command

CHECK_ARGS = ["bench", "--gpu-check", "--sizes", "tiny", "--device", "cpu", "--frame-size", "64", "--steps", "1", "--rows", "1",
              "--no-progress", "eval.max_new_tokens=8", "stages.grpo.max_new_tokens=8"]


def test_gpu_check_runs_every_stage_at_tiny_size_on_the_cpu_through_the_cli(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main([*CHECK_ARGS, "--work-dir", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    steps = {r["step"]: r for r in res["steps"]}
    assert list(steps) == list(CHECK_STEPS) == ["build", "save", "teacher targets", "stage-1 step", "GRPO group", "stage-2 data",
                                                "load", "evaluate", "infer"]
    assert {k: r["status"] for k, r in steps.items() if r["status"] != "ok"} == {} and res["ok"]  # every step ran
    for name, r in steps.items():
        assert name in printed
        if name == "save": continue  # writes a folder, runs no model
        assert r["devices"] and set(r["devices"].values()) == {"cpu"}, (name, r["devices"])  # and reports where its models ran
        assert r["planned_gib"] > 0 and r["seconds"] > 0, name
    for name in ("teacher targets", "stage-1 step", "GRPO group", "stage-2 data", "evaluate", "infer"):
        assert {"LLM", "SAM encoder", "mask decoder"} <= set(steps[name]["devices"]), name  # seen by the forward hook
        assert steps[name]["rows"] >= 1 and steps[name]["tokens"] > 0, name
    assert steps["stage-1 step"]["tokens"] > steps["evaluate"]["tokens"]  # the SFT row holds the answer, the prompt does not
    for k, v in res["static"].items(): assert abs(v["measured_gib"] - v["planned_gib"]) < 1e-6, k
    assert res["params"] == int(param_counts(get_config("tiny", LORA)).loc["total", "params"])
    assert list(tmp_path.iterdir()) == [out]  # the scratch folder is gone


class Placed(Exception):
    "Raised by the patched `run_device`: the code asked where to place a model."


def _raise_placed(device=None): raise Placed(device)


def test_gpu_check_load_step_places_the_model_by_the_device_rule(tmp_path, monkeypatch):
    import aurora_nb.model
    from aurora_nb.model import save_pretrained
    from aurora_nb.scale import CheckRow, _check_load, check_config
    cfg = check_config("tiny")
    folder = save_pretrained(build_model_quietly(cfg), tmp_path / "model")
    ctx = dict(cfg=cfg, folder=folder, device=torch.device("cpu"), device_arg=None, n_tokens=None)
    monkeypatch.setattr(aurora_nb.model, "run_device", _raise_placed)  # `place` looks it up at call time
    with pytest.raises(Placed): _check_load(ctx, CheckRow("load"))


def test_gpu_check_reports_a_failed_step_and_skips_what_needs_it(monkeypatch, capsys):
    import aurora_nb.scale
    def broken(ctx, row): raise RuntimeError("out of memory (a stand-in)")
    monkeypatch.setitem(aurora_nb.scale.CHECK_STEPS, "build", (broken, ()))
    assert main(CHECK_ARGS) == 1  # a failed step: exit code 1
    out, err = capsys.readouterr()
    lines = {l.split()[0]: l for l in out.splitlines() if l.split() and l.split()[0] in ("build", "save", "load", "infer")}
    assert "failed: RuntimeError: out of memory (a stand-in)" in lines["build"] and "Traceback" in err
    assert "skipped: build did not run" in lines["save"] and "skipped: save did not run" in lines["load"]
    assert "skipped: load did not run" in lines["infer"]


def test_gpu_check_refuses_full_sizes_without_a_gpu(capsys):
    assert main(["bench", "--gpu-check", "--sizes", "full", "--device", "cpu"]) == 2
    assert "needs a GPU" in capsys.readouterr().err


def test_bench_plan_prints_the_table(capsys):
    assert main(["bench", "--plan", "--config", str(ROOT / "configs" / "full-8x80gb.yaml"), "--gpus", "8", "--strategy", "zero3",
                 "--stage", "grpo"]) == 0
    out = capsys.readouterr().out
    assert "full-8x80gb: stage grpo on 8 GPU(s) with zero3" in out and "KV cache" in out and "peak per GPU" in out


# Two processes train like one

def _launch(script_args, procs, port, timeout=600):
    "Run tests/scale_run.py in one plain process or in `procs` gloo processes under accelerate (no visible GPU)."
    run = [str(ROOT / "tests" / "scale_run.py"), *script_args]
    cmd = ([sys.executable, *run] if procs == 1 else
           [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(procs), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *run])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


def _same_weights(a: Path, b: Path, rtol: float = 2e-5) -> float:
    """Every trainable weight of run `b` within `rtol` x the largest weight of run `a`; returns that relative gap.
    Measured on these machines: 1e-7 to 4e-6 for SFT with the same global batch (sums in another order), 0 for GRPO, 1.1e-4 when the SFT
    global batch differs (2 instead of 4 samples), 3e-2 when GRPO's two processes sample unseeded."""
    wa, wb = torch.load(a / "weights.pt"), torch.load(b / "weights.pt")
    assert wa.keys() == wb.keys()
    scale = max(float(w.abs().max()) for w in wa.values())
    gap = max(float((wa[n] - wb[n]).abs().max()) for n in wa) / scale  # a per-tensor ratio would divide by ~0 for k biases
    print(f"{a.name} vs {b.name}: largest weight gap / largest weight = {gap:.1e}")
    assert gap < rtol, gap
    return gap


SFT_SHORT = ["stages.teacher.max_steps=3", "stages.teacher.warmup_steps=0", "stages.teacher.save_steps=100",
             "stages.teacher.logging_steps=100", "stages.teacher.grad_accum=1"]


@pytest.mark.skipif(shutil.which("accelerate", path=str(BIN)) is None, reason="accelerate CLI not installed")
def test_sft_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    _launch(["sft", str(tmp_path / "one"), *SFT_SHORT, "stages.teacher.batch_size=4"], 1, 0)
    _launch(["sft", str(tmp_path / "two"), *SFT_SHORT, "stages.teacher.batch_size=2"], 2, 29531)
    init = {n: p.detach() for n, p in build_model_quietly(get_config("tiny")).named_parameters()}
    moved = torch.load(tmp_path / "one" / "weights.pt")
    assert max(float((moved[n] - init[n]).abs().max()) for n in moved) > 1e-3  # three real steps were taken
    _same_weights(tmp_path / "one", tmp_path / "two")


GRPO_SHORT = ["model.trainable=lora", "model.lora.dropout=0.0", "stages.grpo.max_steps=2", "stages.grpo.save_steps=100",
              "stages.grpo.warmup_steps=0", "stages.grpo.max_new_tokens=8", "stages.grpo.lr=1e-2", "stages.grpo.grad_accum=1"]


@pytest.mark.skipif(shutil.which("accelerate", path=str(BIN)) is None, reason="accelerate CLI not installed")
def test_grpo_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    init = tmp_path / "init"
    torch.manual_seed(0)
    build_model_quietly(get_config("tiny")).save_pretrained(init / MODEL_DIR)
    _launch(["grpo", str(init), str(tmp_path / "one"), *GRPO_SHORT, "stages.grpo.batch_size=2"], 1, 0)
    _launch(["grpo", str(init), str(tmp_path / "two"), *GRPO_SHORT, "stages.grpo.batch_size=1"], 2, 29533)
    w = torch.load(tmp_path / "one" / "weights.pt")
    assert any(float(w[n].abs().max()) > 0 for n in w if "lora_B" in n)  # it trained (B starts at 0)
    _same_weights(tmp_path / "one", tmp_path / "two")
