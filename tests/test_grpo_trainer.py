"""GRPO trainer on the tiny omni model: media tensors required, shared-prefill rollouts equal naive ones, the loss's
log-probs equal a direct forward, KL zero at the first step through the trainer, zero-spread logging, a rollout without
[SEG] scored and trained like the others, resume."""
import numpy as np
import pytest
import torch
from transformers import TrainingArguments

from aurora_nb.config import get_config
from aurora_nb.cot import build_messages
from aurora_nb.data import RefAVSDataset
from aurora_nb.grpo import (AuroraGRPOTrainer, Rollouts, answer_rows, modality_inputs, repeat_group, sample_group, token_pass)
from aurora_nb.losses import bce_loss, dice_loss
from aurora_nb.model import AuroraCollator, build_model, generate_answers
from aurora_nb.rewards import REWARDS, iou_reward, register_reward, reward_weights

torch.set_num_threads(2)


def cfg(**extra):
    return get_config("tiny", {"model.trainable": "lora", "model.freeze_sam_encoder": True, "model.lora.dropout": 0.0,
                               "stages.grpo.max_new_tokens": 12, **extra})


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(cfg()).eval()


@pytest.fixture(scope="module")
def ds(repo_root):
    return RefAVSDataset(repo_root / "data" / "synth", "train")


@pytest.fixture(scope="module")
def prompt(tiny, ds):
    return AuroraCollator(tiny.processor, tiny.config, answer_key=None, build_messages=build_messages)([ds[0]])


@register_reward("test_vowels", overwrite=True)
def _vowels(text, **_):
    "A reward with spread on a random model's text."
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / max(len(letters), 1)


def test_missing_media_fails_loudly(prompt, tiny):
    for k in ("pixel_values_videos", "input_features"):
        with pytest.raises(ValueError, match=k):
            sample_group(tiny, {kk: v for kk, v in prompt.items() if kk != k}, 2, 4)


def test_greedy_shared_prefill_equals_naive_and_logps_agree(tiny, prompt):
    G = 3
    shared = sample_group(tiny, prompt, G, 12, greedy=True)
    grp = repeat_group(prompt, G)
    naive, _ = generate_answers(tiny, grp, max_new_tokens=12)
    assert [r[:len(a)] for r, a in zip(shared.ids, naive)] == naive
    sampled = sample_group(tiny, prompt, G, 12, generator=torch.Generator().manual_seed(3))
    rows = answer_rows(grp, sampled.ids, tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        _, lp = token_pass(tiny, rows, modality_inputs(grp))
    for g, r in enumerate(sampled.ids):
        torch.testing.assert_close(lp[g, -len(r):], sampled.logps[g, :len(r)], atol=1e-5, rtol=0)


def test_loss_logps_equal_a_direct_forward_with_the_media(tiny, prompt):
    G = 2
    grp = repeat_group(prompt, G)
    sampled = sample_group(tiny, prompt, G, 8, generator=torch.Generator().manual_seed(1))
    rows = answer_rows(grp, sampled.ids, tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        _, lp = token_pass(tiny, rows, modality_inputs(grp))
        logits = tiny.thinker(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"],
                              **modality_inputs(grp)).logits.float()  # [G, L, V] the plain full forward
        text_only = tiny.thinker(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits.float()
    ids, comp = rows["input_ids"], rows["answer_mask"].bool()
    b, p = comp[:, 1:].nonzero(as_tuple=True)
    ref = torch.zeros_like(lp)
    ref[b, p + 1] = torch.log_softmax(logits, -1)[b, p, ids[b, p + 1]]
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=0)
    bare = torch.zeros_like(lp); bare[b, p + 1] = torch.log_softmax(text_only, -1)[b, p, ids[b, p + 1]]
    assert (lp - bare).abs().max() > 1e-3  # the media matter: a text-only pass would give other numbers


def _args(out, steps, **kw):
    return TrainingArguments(output_dir=str(out), per_device_train_batch_size=1, max_steps=steps, learning_rate=1e-2,
                             logging_steps=1, report_to=[], use_cpu=True, seed=0, remove_unused_columns=False,
                             disable_tqdm=True, dataloader_num_workers=0, **kw)


def test_kl_zero_at_the_first_step_then_positive(tmp_path, ds):
    torch.manual_seed(0)
    model = build_model(cfg(**{"stages.grpo.kl_beta": 0.04}))
    w = {**reward_weights(model.config.stages.grpo), "test_vowels": 1.0}
    tr = AuroraGRPOTrainer(model, _args(tmp_path, 2, save_strategy="no"), ds, weights=w)
    tr.train()
    logs = [l for l in tr.state.log_history if "kl" in l]
    assert logs[0]["kl"] == 0.0 and logs[1]["kl"] > 0.0
    assert logs[0]["zero_spread"] == 0.0 and logs[0]["reward/test_vowels/std"] > 0
    for k in ("reward/format/mean", "reward/iou/std", "clip_fraction", "completion_length/mean", "truncated", "seg_found"):
        assert k in logs[0], k


def test_zero_spread_groups_are_counted_and_leave_only_the_mask_loss(tmp_path, ds):
    torch.manual_seed(0)
    model = build_model(cfg(**{"stages.grpo.kl_beta": 0.0}))
    w = {"format": 1.0, "class": 1.0, "iou": 0.0}  # a random model earns no text reward: equal totals
    tr = AuroraGRPOTrainer(model, _args(tmp_path, 1, save_strategy="no"), ds, weights=w, filter_zero_spread=True)
    tr.train()
    log = [l for l in tr.state.log_history if "kl" in l][0]
    assert log["zero_spread"] == 1.0 and log["truncated"] == 1.0 and log["pg_loss"] == 0.0
    assert log["reward/iou/mean"] > 0  # reported (every rollout's mask is scored), weighted 0
    assert log["mask_loss"] > 0 and log["loss"] == pytest.approx(log["mask_loss"], rel=1e-4)


def _scripted_group(model, item):
    "The worked group of the rewards chapter on `item`: a good answer, a truncated one without [SEG], a wrong class."
    tok, cat = model.tokenizer, item["category"]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    texts = [f"Images: a red circle. The target is {cat}. It is [SEG].", f"Images: a red circle. The target is {cat}. It is the",
             "Images: a red circle. The target is nothing. It is [SEG]."]
    ids = [tok.encode(t, add_special_tokens=False) + ([] if i == 1 else [eos]) for i, t in enumerate(texts)]
    return Rollouts(ids, torch.zeros(3, max(map(len, ids))), torch.tensor([False, True, False]))


def test_a_rollout_without_seg_earns_its_decoded_masks_iou_and_joins_the_mask_loss(tmp_path, tiny, ds, monkeypatch):
    "The method: a rollout without [SEG] is read at its last position; its mask is scored and trained like the others."
    import aurora_nb.grpo
    seen = []
    def spy(fn):
        def f(x, y, *a, **kw):
            seen.append((fn.__name__, x.detach().clone()))
            return fn(x, y, *a, **kw)
        return f
    monkeypatch.setattr(aurora_nb.grpo, "bce_loss", spy(bce_loss))
    monkeypatch.setattr(aurora_nb.grpo, "dice_loss", spy(dice_loss))
    tr = AuroraGRPOTrainer(tiny, _args(tmp_path, 1, save_strategy="no"), ds)  # the built-in rewards, mask loss on "all"
    item = ds[0]
    loss = tr.group_step(tiny, item, rollouts=_scripted_group(tiny, item))
    lg, m = tr.last_group, tr._metrics
    assert lg["found"] == [True, False, True]
    masks, gt = lg["masks"], lg["gt"]  # [3, T, H, W] logits, [T, H, W]
    ious = [iou_reward(x, gt) for x in masks]
    assert ious[1] > 0.01  # so crediting and zeroing the rollout without [SEG] give different rewards
    assert lg["rewards"]["iou"] == pytest.approx(ious, abs=1e-6)
    assert lg["rewards"]["total"][1] == pytest.approx(0 + 2 + ious[1], abs=1e-6)  # format 0, class 2, its IoU
    assert [n for n, _ in seen] == ["bce_loss", "dice_loss"]
    for _, x in seen: torch.testing.assert_close(x, masks, atol=0, rtol=0)  # all three masks, the one without [SEG] too
    y = gt[None].expand_as(masks).float()
    assert m["mask_loss"][-1] == pytest.approx(float(2 * bce_loss(masks, y) + 0.5 * dice_loss(masks, y)), rel=1e-5)
    assert float(loss) == pytest.approx(m["pg_loss"][-1] + m["mask_loss"][-1], rel=1e-5)  # β = 0: policy + masks


def test_kl_needs_adapters(ds):
    model = build_model(get_config("tiny", {"model.trainable": "all", "stages.grpo.kl_beta": 0.04}))
    with pytest.raises(ValueError, match="kl_beta"):
        AuroraGRPOTrainer(model, _args("/tmp/unused", 1), ds)


def test_two_steps_resume_exactly(tmp_path, ds):
    def run(out, steps, resume=None):
        torch.manual_seed(0)
        model = build_model(cfg())
        w = {**reward_weights(model.config.stages.grpo), "test_vowels": 1.0}
        tr = AuroraGRPOTrainer(model, _args(out, steps, save_strategy="steps", save_steps=1), ds, weights=w)
        tr.train(resume_from_checkpoint=resume)
        return tr, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    tr, full = run(tmp_path / "a", 2)  # writes checkpoint-1 and checkpoint-2
    start = {n: p.detach().clone() for n, p in build_model(cfg()).named_parameters() if p.requires_grad}
    assert any(not torch.equal(full[n], start[n]) for n in full)  # the run moved the weights
    tr, resumed = run(tmp_path / "b", 2, resume=str(tmp_path / "a" / "checkpoint-1"))  # as if stopped after step 1
    assert tr.state.global_step == 2
    for n in full:
        torch.testing.assert_close(resumed[n], full[n], atol=1e-6, rtol=0, msg=n)


def test_top_p_sampling_keeps_the_nucleus_with_renormalised_probabilities():
    from aurora_nb.grpo import _sample_top_p
    p = torch.tensor([0.05, 0.5, 0.15, 0.3])  # sorted: 0.5, 0.3 reach 0.7; 0.15 and 0.05 fall outside
    logits = p.log()[None].expand(20000, -1)  # [N, V]
    x = _sample_top_p(logits, 1.0, 0.7, torch.Generator().manual_seed(0))
    assert set(x.tolist()) == {1, 3}
    assert abs((x == 1).float().mean().item() - 0.5 / 0.8) < 0.02
    y = _sample_top_p(logits, 1.0, 1.0, torch.Generator().manual_seed(0))  # top_p = 1: the full distribution
    assert set(y.tolist()) == {0, 1, 2, 3}
