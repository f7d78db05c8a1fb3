"""GRPO objective: advantages by hand (sample std, as the release and trl), the clip, the k3 KL, the loss and its
gradient, and parity with trl 1.16's own `GRPOTrainer._compute_loss` (loss, gradients, logged KL and clip share)."""
import math
import statistics

import pytest
import torch

from aurora_nb.grpo import clipped_objective, group_advantages, grpo_loss, kl_k3, masked_sequence_mean, zero_spread


def test_group_advantages_use_the_sample_std_per_group():
    r = torch.tensor([3.2, 1.0, 2.5, 0.0, 4.0, 1.0])
    adv = group_advantages(r, 3)
    for k, grp in enumerate([[3.2, 1.0, 2.5], [0.0, 4.0, 1.0]]):
        m, s = statistics.mean(grp), statistics.stdev(grp)  # stdev: divide by G - 1
        torch.testing.assert_close(adv[3 * k:3 * k + 3], torch.tensor([(x - m) / (s + 1e-4) for x in grp]))
    assert not torch.allclose(adv[:3], torch.tensor([(x - 2.2333333) / (statistics.pstdev([3.2, 1.0, 2.5]) + 1e-4)
                                                     for x in [3.2, 1.0, 2.5]]), atol=1e-3)


def test_group_advantages_match_trl():
    from trl.trainer.utils import nanstd
    r = torch.rand(12, generator=torch.Generator().manual_seed(0)) * 4
    g = r.view(-1, 4)
    theirs = (g - g.mean(1, keepdim=True)) / (nanstd(g, dim=1, keepdim=True) + 1e-4)  # trl's sum_then_normalize, group
    torch.testing.assert_close(group_advantages(r, 4), theirs.view(-1))


def test_equal_rewards_give_zero_advantage_and_count_as_zero_spread():
    r = torch.tensor([2.0, 2.0, 2.0, 0.0, 1.0, 1.0])
    assert torch.equal(group_advantages(r, 3)[:3], torch.zeros(3))
    assert zero_spread(r, 3).tolist() == [True, False]
    assert torch.equal(group_advantages(torch.tensor([1.5]), 1), torch.zeros(1))  # G = 1: no baseline, no signal


def test_equal_rewards_give_exactly_zero_advantage_whatever_their_value():
    x = torch.tensor(1.9603736400604248)
    assert not torch.equal(x.repeat(3).mean(), x)  # float32's mean of three equal values misses them by an ulp
    assert torch.equal(group_advantages(x.repeat(3), 3), torch.zeros(3))  # not ±0.001: no signal at all


def test_group_mask_loss_covers_all_rollouts_or_the_best_one():
    from aurora_nb.grpo import group_mask_loss
    from aurora_nb.losses import bce_loss, dice_loss
    masks = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 3  # [G, T, H, W] logits
    gt = torch.zeros(2, 4, 4); gt[0, 1:3, 1:3] = 1
    one = [2 * bce_loss(masks[[g]], gt[None]) + 0.5 * dice_loss(masks[[g]], gt[None]) for g in range(3)]
    torch.testing.assert_close(group_mask_loss(masks, gt, torch.tensor([1.0, 3.0, 2.0])), torch.stack(one).mean())
    torch.testing.assert_close(group_mask_loss(masks, gt, torch.tensor([1.0, 3.0, 2.0]), on="best"), one[1])
    with pytest.raises(ValueError, match="mask_loss_on"):
        group_mask_loss(masks, gt, torch.zeros(3), on="found")


@pytest.mark.parametrize("bad", [dict(rewards=torch.ones(5), G=3), dict(rewards=torch.ones(2, 3), G=3),
                                 dict(rewards=torch.ones(6), G=0), dict(rewards=torch.ones(6), G=True)])
def test_group_advantages_refuse_a_bad_shape(bad):
    with pytest.raises(ValueError, match="multiple of the group size"):
        group_advantages(**bad)


def test_clip_caps_good_answers_and_floors_bad_ones():
    rho = torch.tensor([[0.5, 1.0, 1.5]])
    lr = rho.log()
    up = clipped_objective(lr, torch.zeros_like(lr), torch.tensor([2.0]))
    down = clipped_objective(lr, torch.zeros_like(lr), torch.tensor([-2.0]))
    torch.testing.assert_close(up, torch.tensor([[1.0, 2.0, 2.4]]))
    torch.testing.assert_close(down, torch.tensor([[-1.6, -2.0, -3.0]]))
    hi = clipped_objective(lr, torch.zeros_like(lr), torch.tensor([1.0]), epsilon_high=0.28)
    torch.testing.assert_close(hi[0, 2], torch.tensor(1.28))


def test_kl_is_zero_when_policy_equals_reference_and_positive_otherwise():
    lp = torch.log(torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05)
    assert torch.equal(kl_k3(lp, lp), torch.zeros(4, 6))
    assert (kl_k3(lp, lp + 0.1) > 0).all() and (kl_k3(lp, lp - 0.1) > 0).all()
    torch.testing.assert_close(kl_k3(torch.tensor([0.0]), torch.tensor([math.log(2)])), torch.tensor([1 - math.log(2)]))


def test_kl_at_the_first_step_is_zero_with_zero_gradient():
    lp = torch.log(torch.tensor([[0.5, 0.2, 0.7], [0.4, 0.9, 0.1]])).requires_grad_()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = grpo_loss(lp, torch.zeros(2), mask, ref_logps=lp.detach().clone(), beta=0.04)
    out.loss.backward()
    assert out.kl.item() == 0.0 and torch.equal(lp.grad, torch.zeros(2, 3))


def test_loss_is_a_per_sequence_token_mean_then_a_mean():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    torch.testing.assert_close(masked_sequence_mean(x, mask), torch.tensor((2.0 + 4.0) / 2))
    torch.testing.assert_close(masked_sequence_mean(x, torch.zeros(2, 3)), torch.tensor(0.0))  # empty: 0, not nan


def test_on_policy_gradient_is_reinforce_with_the_group_baseline():
    rewards = torch.tensor([3.2, 1.0, 2.5])
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.8], [0.6, 0.9, 0.9], [0.3, 0.3, 0.3]])).requires_grad_()
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    A = group_advantages(rewards, 3)
    grpo_loss(lp, A, mask, beta=0.0).loss.backward()
    torch.testing.assert_close(lp.grad, -A[:, None] / (3 * mask.sum(1, keepdim=True)) * mask)


def test_equal_rewards_give_zero_policy_gradient():
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.8], [0.6, 0.9, 0.9], [0.3, 0.3, 0.3]])).requires_grad_()
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    old = lp.detach() + torch.tensor([[0.1, -0.3, 0.0], [0.2, 0.0, 0.0], [-0.1, 0.4, 0.0]])  # off-policy too
    grpo_loss(lp, group_advantages(torch.full((3,), 2.0), 3), mask, old_logps=old, beta=0.0).loss.backward()
    assert torch.equal(lp.grad, torch.zeros(3, 3))


def test_grpo_loss_refuses_missing_reference_and_bad_shapes():
    lp, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="ref_logps is required"):
        grpo_loss(lp, torch.zeros(2), mask, beta=0.04)
    with pytest.raises(ValueError, match=r"must both be \[N, T\]"):
        grpo_loss(lp, torch.zeros(3), mask, beta=0.0)
    assert grpo_loss(lp, torch.zeros(2), mask, beta=0.0).loss.item() == 0.0  # beta = 0 needs no reference


# ---- parity with trl 1.16's own loss ----

@pytest.fixture(scope="module")
def trl_setup(repo_root):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(repo_root / "data" / "tokenizer")
    lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id))
    gen = torch.Generator().manual_seed(1)
    N, P, C = 6, 5, 7
    b = dict(prompt_ids=torch.randint(20, 500, (N, P), generator=gen),
             prompt_mask=torch.ones(N, P, dtype=torch.long),
             completion_ids=torch.randint(20, 500, (N, C), generator=gen),
             completion_mask=(torch.arange(C)[None] < torch.tensor([7, 3, 5, 1, 6, 4])[:, None]).long(),
             advantages=group_advantages(torch.tensor([3.2, 1.0, 2.5, 0.0, 1.0, 2.0]), 3))
    b["prompt_mask"][0, :2] = 0  # left padding

    def completion_logps(model):
        ids = torch.cat([b["prompt_ids"], b["completion_ids"]], 1)
        att = torch.cat([b["prompt_mask"], b["completion_mask"]], 1)
        logits = model(input_ids=ids, attention_mask=att).logits[:, P - 1:-1]  # [N, C, V]
        return torch.log_softmax(logits.float(), -1).gather(-1, b["completion_ids"][..., None])[..., 0]

    with torch.no_grad(): now = completion_logps(lm)
    b["old_per_token_logps"] = now + 0.3 * torch.randn(N, C, generator=gen)  # ratios beyond 1 ± ε
    b["ref_per_token_logps"] = now + 0.5 * torch.randn(N, C, generator=gen)
    return tok, lm, b, completion_logps


def _trl_trainer(tok, lm, beta, bias_correction, out_dir):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    args = GRPOConfig(output_dir=str(out_dir), loss_type="grpo", beta=0.0, epsilon=0.2, num_generations=3, bf16=False,
                      use_cpu=True, per_device_train_batch_size=6, report_to=[], activation_checkpointing=False,
                      use_bias_correction_kl=bias_correction)
    tr = GRPOTrainer(model=lm, reward_funcs=[lambda completions, **_: [0.0] * len(completions)], args=args,
                     train_dataset=Dataset.from_dict({"prompt": ["x"] * 6}), processing_class=tok)
    tr.beta, tr.current_gradient_accumulation_steps = beta, 1  # beta after construction: no hub reference model
    return tr


@pytest.mark.parametrize("beta,bias_correction", [(0.0, False), (0.04, False), (0.04, True)])
def test_loss_and_gradients_equal_trl_grpo_loss(trl_setup, tmp_path, beta, bias_correction):
    tok, lm, b, completion_logps = trl_setup
    tr = _trl_trainer(tok, lm, beta, bias_correction, tmp_path)
    lm.zero_grad()
    theirs = tr._compute_loss(lm, dict(b))
    theirs.backward()
    g_theirs = [p.grad.clone() for p in lm.parameters()]
    lm.zero_grad()
    ours = grpo_loss(completion_logps(lm), b["advantages"], b["completion_mask"], old_logps=b["old_per_token_logps"],
                     ref_logps=b["ref_per_token_logps"], beta=beta, epsilon=0.2, kl_ratio_weight=bias_correction)
    ours.loss.backward()
    assert abs(ours.loss.item() - theirs.item()) <= 1e-5
    for p, g in zip(lm.parameters(), g_theirs):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)
    logged = tr._metrics["train"]
    assert 0 < ours.clip_fraction.item() < 1  # the clip binds on some tokens: the comparison covers it
    assert abs(ours.clip_fraction.item() - logged["clip_ratio/region_mean"][-1]) <= 1e-6
    if beta: assert abs(ours.kl.item() - logged["kl"][-1]) <= 1e-6
