"""The SFT trainer: label masking, exact token-level CE under accumulation, distillation gradients, the teacher-target
store, the teacher on the run's device, over-long rows counted by kind under each stage's limit, kill-and-resume
equality, the command line and a two-process run (the session's shared run, tests/conftest.py's `sft_runs`)."""
import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

import aurora_nb.model
import aurora_nb.sft
from aurora_nb.config import get_config
from aurora_nb.cot import build_messages, cot_answer, teacher_answer
from aurora_nb.data import RefAVSDataset
from aurora_nb.losses import loss_weights
from aurora_nb.model import AuroraCollator, build_model, from_pretrained, save_pretrained
from aurora_nb.sft import (DATA_SUMMARY, MODEL_DIR, LOG_DIR, OTHER_STAGE_HANDLERS, AuroraSFTTrainer, SFTCollator, SFTDataset,
                           live_targets, load_teacher_store, teacher_store, teacher_targets, train_main, train_stage, training_args)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def base():
    return RefAVSDataset(ROOT / "data" / "synth", "train")


@pytest.fixture(scope="module")
def tiny():
    return build_model(get_config("tiny"))


def _items(base, answers):
    "Rows 0.. of the train split with the given assistant texts and their split positions."
    return [{**base[i], "answer": a, "position": i} for i, a in enumerate(answers)]


def test_labels_are_the_answer_and_its_im_end_only(tiny, base):
    tok = tiny.tokenizer
    items = _items(base, [teacher_answer("hair-dryer"), cot_answer("Images: two shapes. Audio: a bell. Reference: it. "
                                                                 "Answer: The target is bell."), teacher_answer("x")])
    batch = SFTCollator(AuroraCollator(tiny.processor, tiny.config, build_messages=build_messages))(items)
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    for b, it in enumerate(items):
        lab, n = batch["labels"][b], int(batch["attention_mask"][b].sum())
        assert tok.decode(lab[lab != -100]) == it["answer"] + "<|im_end|>"
        assert int(lab[n - 1]) == end_id and (lab[n:] == -100).all()  # the closing <|im_end|> is labelled, padding is not
        k = len(tok(it["answer"] + "<|im_end|>")["input_ids"])
        assert (lab[:n - k] == -100).all() and (lab[n - k:n] == batch["input_ids"][b, n - k:n]).all()  # prompt unlabelled
    assert batch["position"].tolist() == [0, 1, 2]


class _Grab(TrainerCallback):
    def __init__(self, model): self.model, self.grads = model, {}
    def on_pre_optimizer_step(self, args, state, control, **kw):
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}


def _step_grads(tmp_path, items, bs, accum, trainer_cls=AuroraSFTTrainer):
    "Gradients of one optimizer step of the SFT trainer (lr 0) with micro-batch `bs` and `accum` micro-steps."
    cfg = get_config("tiny", {"stages.teacher.batch_size": bs, "stages.teacher.grad_accum": accum, "stages.teacher.max_steps": 1,
                              "stages.teacher.lr": 0.0, "stages.teacher.max_grad_norm": 0.0})
    model = build_model(cfg)
    grab = _Grab(model)
    args = training_args(cfg.stages.teacher, tmp_path / f"g{bs}x{accum}", progress=False, save_strategy="no", logging_strategy="no")
    tr = trainer_cls(model=model, args=args, train_dataset=items, weights=loss_weights(cfg.stages.teacher), callbacks=[grab],
                     data_collator=SFTCollator(AuroraCollator(model.processor, cfg, build_messages=build_messages)))
    tr.train()
    return grab.grads


def test_cross_entropy_is_exact_under_accumulation_with_unequal_answers(tmp_path, base):
    "4 x 1 and 2 x 2 give the same gradients although the answers differ in length; a per-micro-batch mean would not."
    long = cot_answer("Images: " + "a red circle moves left, " * 6 + "Audio: silence. Reference: it. Answer: The target is drum.")
    longer = cot_answer("Images: " + "a blue ring stays still, " * 14 + "Audio: a bell. Reference: it. Answer: The target is bell.")
    items = _items(base, [teacher_answer("drum"), long, teacher_answer("bell"), longer])  # every pairing is unequal
    g1, g2 = _step_grads(tmp_path, items, 4, 1), _step_grads(tmp_path, items, 2, 2)
    assert g1.keys() == g2.keys() and len(g1) > 10
    for n in g1: torch.testing.assert_close(g2[n], g1[n], atol=2e-5, rtol=2e-3, msg=n)

    class MeanPerMicroBatch(AuroraSFTTrainer):  # what averaging the CE inside each micro-batch would give
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return super().compute_loss(model, inputs, return_outputs, None)
    g3 = _step_grads(tmp_path, items, 2, 2, MeanPerMicroBatch)
    name = "thinker.lm_head.weight"
    assert not torch.allclose(g3[name], g1[name], atol=2e-5, rtol=2e-3)


def test_distillation_gradient_reaches_the_student_only(tmp_path, base):
    cfg = get_config("tiny")
    student, teacher = build_model(cfg), build_model(get_config("tiny", {"seed": 1}))
    collate = SFTCollator(AuroraCollator(student.processor, cfg, build_messages=build_messages), live_teacher=True)
    tr = AuroraSFTTrainer(model=student, args=training_args(cfg.stages.sft, tmp_path, progress=False), train_dataset=[],
                          weights={"ce": 0.0, "bce": 0.0, "dice": 0.0, "kd": 1.0}, teacher=teacher, data_collator=collate)
    batch = collate(_items(base, [teacher_answer("x"), cot_answer("Answer: The target is y.")]))
    loss = tr.compute_loss(student, batch)
    loss.backward()
    assert float(loss.detach()) > 0 and tr._parts["kd"][-1] > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert student.projector[0].weight.grad.abs().sum() > 0  # through the projector ...
    assert student.thinker.lm_head.weight.grad is None or student.thinker.lm_head.weight.grad.abs().sum() == 0  # CE weight 0
    layers = [p.grad for n, p in student.thinker.named_parameters() if "layers.1." in n and p.grad is not None]
    assert layers and any(g.abs().sum() > 0 for g in layers)  # ... into the thinker's last layer


def test_teacher_store_equals_a_live_teacher_and_refuses_another_teacher(tmp_path):
    val = RefAVSDataset(ROOT / "data" / "synth", "val")
    cfg = get_config("tiny")
    teacher, student = build_model(get_config("tiny", {"seed": 3})), build_model(cfg)
    store = teacher_store(teacher, val, tmp_path / "t.safetensors", batch_size=4, progress=False)
    assert store.shape == (len(val), cfg.model.prompt_dim)
    collate = SFTCollator(AuroraCollator(student.processor, cfg, build_messages=build_messages), live_teacher=True)
    batch = collate([{**val[i], "answer": teacher_answer(val[i]["category"]), "position": i} for i in (7, 2)])
    with torch.no_grad(): live = teacher(**batch["teacher_inputs"]).seg_embeddings  # what the live-teacher path computes
    torch.testing.assert_close(store[[7, 2]], live, atol=1e-5, rtol=1e-4)
    with torch.no_grad(): teacher.projector[2].bias.add_(1.0)  # another teacher
    with pytest.raises(ValueError, match="another output folder"):
        teacher_store(teacher, val, tmp_path / "t.safetensors", progress=False)
    with pytest.raises(ValueError, match="targets for"):
        load_teacher_store(tmp_path / "t.safetensors", rows=len(val) + 1)


class Placed(Exception):
    "Raised instead of choosing a device: proves that a loader went through `place`."


def _placed(device=None): raise Placed(device)


@pytest.mark.parametrize("live", [False, True], ids=["stored", "live"])
def test_the_teacher_is_placed_on_the_run_device(tmp_path, monkeypatch, live):
    "Both teacher paths (targets stored before stage 1, or a live teacher) load it with the device rule, not on the CPU."
    save_pretrained(build_model(get_config("tiny", {"seed": 3})), tmp_path / "teacher" / MODEL_DIR)
    monkeypatch.setattr(aurora_nb.model, "run_device", _placed)
    cfg = get_config("tiny", {"stages.sft.max_steps": 1, "stages.sft.batch_size": 1})
    with pytest.raises(Placed):
        train_stage(cfg, "sft", tmp_path / "sft", teacher=tmp_path / "teacher", progress=False, live_teacher=live)


def test_teacher_inputs_go_where_the_teacher_runs(monkeypatch, base):
    "The stored and the live targets move their batch to `model_device(teacher)` before the forward."
    teacher, asked = build_model(get_config("tiny")), []
    monkeypatch.setattr(aurora_nb.sft, "model_device", lambda m: asked.append(m) or torch.device("cpu"))
    teacher_targets(teacher, [base[0]])
    batch = SFTCollator(AuroraCollator(teacher.processor, teacher.config, build_messages=build_messages), live_teacher=True)(
        _items(base, [teacher_answer("x")]))
    live_targets(teacher, batch["teacher_inputs"])
    assert len(asked) == 2 and all(m is teacher for m in asked)


PATH = "Images: a red drum moves left. Audio: a bell rings at 2 s. Reference: the first to sound. Answer: The target is drum."


def test_over_long_rows_are_counted_by_kind(base):
    trig = get_config("tiny").stages.reflect.trigger
    cot = {0: PATH, 1: f"{PATH} {trig}. {PATH}", 2: PATH * 20, 3: f"{PATH} {trig}. " + PATH * 20, 4: PATH * 2}
    ds = SFTDataset(base, "reflect", cot, max_cot_chars=2000)
    assert ds.positions == [0, 1, 4] and ds.no_reasoning == len(base) - 5
    assert (ds.kept, ds.dropped) == ({"plain": 2, "reflective": 1}, {"plain": 1, "reflective": 1})
    own = SFTDataset(base, "reflect", cot, max_cot_chars=2000, kinds={2: "reflective", 4: "corrected"})  # the rows' own kinds win
    assert (own.kept, own.dropped) == ({"corrected": 1, "plain": 1, "reflective": 1}, {"reflective": 2})
    assert (SFTDataset(base).kept, SFTDataset(base).dropped) == ({"direct": len(base)}, {})


def test_each_stage_leaves_out_over_long_reasoning_by_its_own_limit_and_records_it(tmp_path, monkeypatch, base, capsys):
    cfg = get_config("tiny", {"stages.sft.kd_weight": 0.0, "stages.reflect.kd_weight": 0.0})
    reflective = " ".join([PATH] * 12) + f" {cfg.stages.reflect.trigger}. " + " ".join([PATH] * 12)  # ~3,000 characters
    cot = {0: PATH, 1: reflective, 2: reflective + " " + reflective, 3: " ".join([PATH] * 30)}
    assert cfg.stages.sft.max_cot_chars < len(cot[1]) < cfg.stages.reflect.max_cot_chars < len(cot[2])
    assert len(cot[3]) < cfg.stages.reflect.max_cot_chars
    monkeypatch.setattr(aurora_nb.sft, "finish_run", lambda trainer, *a: trainer)  # build everything, train nothing
    runs = {st: train_stage(cfg, st, tmp_path / st, cot=cot, progress=False) for st in ("sft", "reflect")}
    err = capsys.readouterr().err
    summary = {st: json.loads((tmp_path / st / DATA_SUMMARY).read_text()) for st in runs}
    assert runs["reflect"].train_dataset.positions == [0, 1, 3]  # stage 2 keeps the ~3,000-character reflective row
    assert runs["sft"].train_dataset.positions == [0]  # stage 1's limit would drop it
    assert {k: summary["reflect"][k] for k in ("rows", "kept", "too_long", "max_cot_chars", "no_reasoning")} == dict(
        rows=3, kept={"plain": 2, "reflective": 1}, too_long={"reflective": 1}, max_cot_chars=4200, no_reasoning=len(base) - 4)
    assert (summary["sft"]["kept"], summary["sft"]["too_long"], summary["sft"]["max_cot_chars"]) == (
        {"plain": 1}, {"plain": 1, "reflective": 2}, 2000)
    assert "stage reflect data: 3 train rows trained (plain 2, reflective 1); left out as too long (>= 4200 characters): reflective 1" in err
    assert "(>= 2000 characters): plain 1, reflective 2" in err


class _Kill(TrainerCallback):
    "Stop the run like a kill: raise after optimizer step `at` (before its checkpoint is written)."
    def __init__(self, at): self.at = at
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at: raise KeyboardInterrupt(f"killed at step {self.at}")


def test_kill_and_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    cfg = get_config("tiny", {"stages.teacher.max_steps": 3, "stages.teacher.save_steps": 2, "stages.teacher.batch_size": 2,
                              "stages.teacher.logging_steps": 1})
    a = train_stage(cfg, "teacher", tmp_path / "a", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_stage(cfg, "teacher", tmp_path / "b", callbacks=[_Kill(3)], progress=False)
    assert (tmp_path / "b" / "checkpoint-2").is_dir() and not (tmp_path / "b" / MODEL_DIR).exists()
    b = train_stage(cfg, "teacher", tmp_path / "b", progress=False)  # the same call again: resumes from checkpoint-2
    assert b.state.global_step == a.state.global_step == 3
    ma, mb = from_pretrained(tmp_path / "a" / MODEL_DIR), from_pretrained(tmp_path / "b" / MODEL_DIR)
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys()
    for n in sa: assert torch.equal(sa[n], sb[n]), n
    assert not torch.equal(sa["projector.0.weight"], build_model(cfg).state_dict()["projector.0.weight"])  # it trained
    logged = [h for h in a.state.log_history if "loss" in h]
    assert len(logged) == 3 and all({"ce_loss", "bce_loss", "dice_loss"} <= set(h) for h in logged)
    assert any((tmp_path / "a" / LOG_DIR).glob("events.out.tfevents.*")) and (tmp_path / "a" / "config.yaml").is_file()


def _ns(**kw):
    d = dict(stage="teacher", preset=None, config=None, overrides=[], out=None, init=None, teacher=None, data_file=None,
             no_progress=True)
    return argparse.Namespace(**{**d, **kw})


def test_train_command_sends_other_stages_to_their_handler_and_refuses_a_missing_teacher(tmp_path, capsys):
    from aurora_nb.cli import TRAIN_HANDLERS
    assert OTHER_STAGE_HANDLERS == {k: v.replace(":", ".") for k, v in TRAIN_HANDLERS.items()}  # the message names the real handlers
    assert train_main(_ns(stage="reflect", out=str(tmp_path / "r"))) == 2
    err = capsys.readouterr().err
    assert "aurora_nb.reflect.train_main" in err and "not built" not in err
    assert train_main(_ns(stage="sft", out=str(tmp_path / "s"))) == 2
    assert "--teacher" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("accelerate", path=str(BIN)) is None, reason="accelerate CLI not installed")
def test_two_processes_train_with_gloo_and_save_one_model(sft_runs):
    "`aurora-nb train` under `accelerate launch` with two gloo processes (no visible GPU): one report, one checkpoint, one model."
    out = sft_runs["two"]
    printed = (out.parent / "stdout.txt").read_text()
    assert printed.count("stage teacher at step 3 (2 processes)") == 1, printed[-2000:]  # two ranks ran; the main process alone prints
    assert [p.name for p in out.iterdir() if p.name.startswith("checkpoint-")] == ["checkpoint-3"]
    from_pretrained(out / MODEL_DIR)
