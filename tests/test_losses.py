"""Losses: each equals its formula on hand-made tensors (empty-GT frames included), padded pixels and padded frame slots
change nothing, the distillation gradient reaches the student only, and the weighted sum reads the config's λ."""
import math

import pytest
import torch

from aurora_nb.config import get_config
from aurora_nb.losses import (DICE_EPS, DICE_SCALE, bce_loss, bce_per_frame, dice_loss, dice_per_frame, loss_weights,
                              seg_distill_loss, total_loss)


def literal_bce(x, y):
    "Per-pixel BCE written from its definition with plain floats, averaged per frame then over frames."
    frames = []
    for xf, yf in zip(x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:])):
        vals = [-(b * math.log(1 / (1 + math.exp(-a))) + (1 - b) * math.log(1 - 1 / (1 + math.exp(-a))))
                for a, b in zip(xf.flatten().tolist(), yf.flatten().tolist())]
        frames.append(sum(vals) / len(vals))
    return sum(frames) / len(frames)


def literal_dice(x, y, s=1000.0, eps=1e-6):
    "The official formula, term by term: 1 - (2·Σ(p/s·y) + ε) / (Σ p/s + Σ y/s + ε) per frame, mean over frames."
    frames = []
    for xf, yf in zip(x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:])):
        p = [1 / (1 + math.exp(-a)) for a in xf.flatten().tolist()]; t = yf.flatten().tolist()
        num = 2 * sum(pi / s * ti for pi, ti in zip(p, t)) + eps
        den = sum(pi / s for pi in p) + sum(ti / s for ti in t) + eps
        frames.append(1 - num / den)
    return sum(frames) / len(frames)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) * 3  # [B, T, H, W]
    y = (torch.rand(2, 3, 4, 5, generator=g) > 0.6).double()
    y[0, 1] = 0; y[1, 2] = 0  # empty-GT frames
    return x, y


def test_bce_equals_its_formula_with_empty_frames(batch):
    x, y = batch
    assert bce_loss(x, y).item() == pytest.approx(literal_bce(x, y), rel=1e-6)


def test_dice_equals_the_official_formula_with_empty_frames(batch):
    x, y = batch
    assert dice_loss(x, y).item() == pytest.approx(literal_dice(x, y), rel=1e-6)
    assert DICE_SCALE == 1000.0 and DICE_EPS == 1e-6


def test_hand_made_2x2_cases():
    x = torch.tensor([[[0., 0.], [0., 0.]], [[-2., -2.], [2., 2.]]])
    y = torch.tensor([[[1., 0.], [0., 1.]], [[0., 0.], [0., 0.]]])
    f1 = 0.5 * (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2)))
    assert bce_per_frame(x, y).tolist() == pytest.approx([math.log(2), f1], rel=1e-6)
    se = 1e-3  # s·ε
    assert dice_per_frame(torch.zeros(2, 2, 2), y).tolist() == pytest.approx([1 - (2 + se) / (4 + se), 1 - se / (2 + se)], rel=1e-6)


def test_empty_frame_with_empty_prediction_costs_nothing_in_dice():
    x = torch.full((1, 8, 8), -40.0)
    assert dice_loss(x, torch.zeros_like(x)).item() == pytest.approx(0.0, abs=1e-6)


def test_padding_changes_nothing():
    g = torch.Generator().manual_seed(0)
    a_x, a_y = torch.randn(2, 3, 4, generator=g), (torch.rand(2, 3, 4, generator=g) > 0.5).float()
    b_x, b_y = torch.randn(2, 5, 6, generator=g), (torch.rand(2, 5, 6, generator=g) > 0.5).float()
    X = torch.full((2, 2, 5, 6), 7.0); Y = torch.ones(2, 2, 5, 6)
    X[0, :, :3, :4], Y[0, :, :3, :4] = a_x, a_y
    X[1], Y[1] = b_x, b_y
    v = torch.zeros(2, 1, 5, 6); v[0, :, :3, :4] = 1; v[1] = 1
    both_x = [a_x, b_x]; both_y = [a_y, b_y]
    assert bce_loss(X, Y, v).item() == pytest.approx(sum(literal_bce(x, y) for x, y in zip(both_x, both_y)) / 2, rel=1e-5)
    assert dice_loss(X, Y, v).item() == pytest.approx(sum(literal_dice(x, y) for x, y in zip(both_x, both_y)) / 2, rel=1e-5)
    assert bce_loss(X, Y).item() != pytest.approx(bce_loss(X, Y, v).item(), rel=1e-2)


def test_padded_frame_slots_are_left_out_of_the_mean():
    x, y = torch.randn(2, 3, 3, 3), torch.zeros(2, 3, 3, 3)
    v = torch.ones(2, 3, 3, 3); v[1, 2] = 0
    expected = torch.cat([bce_per_frame(x[0], y[0]), bce_per_frame(x[1, :2], y[1, :2])]).mean()
    assert bce_loss(x, y, v).item() == pytest.approx(expected.item(), rel=1e-6)


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"same \[\.\.\., T, H, W\] shape"): bce_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="does not broadcast"): dice_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), torch.ones(3, 2))


def test_distillation_is_mse_and_reaches_only_the_student():
    stu = torch.randn(3, 256, requires_grad=True); tea = torch.randn(3, 256, requires_grad=True)
    loss = seg_distill_loss(stu, tea)
    assert loss.item() == pytest.approx(((stu - tea) ** 2).sum().item() / (3 * 256), rel=1e-5)
    loss.backward()
    assert tea.grad is None and torch.allclose(stu.grad, 2 * (stu - tea).detach() / (3 * 256))
    with pytest.raises(ValueError, match="same"): seg_distill_loss(torch.zeros(1, 256), torch.zeros(1, 128))


def test_total_loss_uses_the_stage_weights():
    cfg = get_config("full")
    t = dict(ce=torch.tensor(1.5), bce=torch.tensor(0.25), dice=torch.tensor(0.8), kd=torch.tensor(0.1))
    assert loss_weights(cfg.stages.sft) == {"ce": 1.0, "bce": 2.0, "dice": 0.5, "kd": 1.0}
    assert total_loss(cfg.stages.sft, **t).item() == pytest.approx(1.5 + 0.5 + 0.4 + 0.1)
    assert total_loss(cfg.stages.teacher, **t).item() == pytest.approx(1.5 + 0.5 + 0.4)  # kd_weight 0
    sft = cfg.stages.sft; sft.kd_weight = 0.5; sft.bce_weight = 3.0
    assert total_loss(sft, **t).item() == pytest.approx(1.5 + 0.75 + 0.4 + 0.05)
    assert total_loss(cfg.stages.sft, ce=t["ce"], kd=None).item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="no weight"): total_loss(cfg.stages.grpo, ce=t["ce"])
    with pytest.raises(ValueError, match="unknown"): total_loss(cfg.stages.sft, foo=t["ce"])


def test_model_forward_uses_these_losses():
    "The model's forward computes its mask losses with this module's functions (one definition, no copy)."
    import aurora_nb.model as model
    assert model.bce_loss is bce_loss and model.dice_loss is dice_loss
    assert not hasattr(model, "mask_bce_loss") and not hasattr(model, "mask_dice_loss")
