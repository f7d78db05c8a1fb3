"""The GRPO rollout browser: G rollouts of one prompt side by side with their masks and reward breakdown, a static first
view and a frame slider; fed by the trainer's `last_group`."""
import matplotlib
matplotlib.use("Agg")
import numpy as np
import pytest
import torch

from aurora_nb.viz import _clip_text, browse_rollouts, rollout_view


def _group(G=3, T=2, H=16, W=16):
    masks = torch.full((G, T, H, W), -5.0)  # [G, T, H, W] logits
    masks[0, :, :8] = 5.0  # rollout 0: the top half on every frame
    masks[1, 1, 8:] = 5.0  # rollout 1: the bottom half on frame 1 only
    return dict(texts=["It is [SEG].", "a\x17b " * 200, "no seg"], advantages=[1.1, -0.2, -0.9],
                rewards={"format": [1.0, 0.0, 0.0], "iou": [0.5, 0.0, 0.0], "total": [1.5, 0.0, 0.0]},
                masks=masks, found=[True, True, False], truncated=[False, True, False],
                frames=np.zeros((T, H, W, 3), np.uint8), gt=np.ones((T, H, W), np.uint8), expression="the dog", category="dog")


def test_rollout_view_draws_each_rollout_with_its_mask_and_rewards():
    g = _group()
    fig = rollout_view(g, frame=1)
    axs = fig.axes
    assert len(axs) == 4 and "GT, frame 1" in axs[0].get_title()
    t = [a.get_title() for a in axs[1:]]
    assert "total 1.50" in t[0] and "A +1.10" in t[0] and "format 1.00 iou 0.50" in t[0]
    assert "truncated" in t[1] and "no [SEG]" in t[2] and "no [SEG]" not in t[0]
    img0, img1 = (np.asarray(a.images[0].get_array()) for a in axs[1:3])  # the overlays: the mask region is coloured
    assert img0[:8].any() and not img0[8:].any()  # rollout 0's mask on frame 1: top half only
    assert img1[8:].any() and not img1[:8].any()
    assert "\x17" not in axs[2].get_xlabel() and len(axs[2].get_xlabel()) < 250  # clipped, control chars drawn as ·
    with pytest.raises(IndexError, match="2 frames"): rollout_view(g, frame=2)


def test_browser_has_a_frame_slider_and_the_full_completions():
    g = _group()
    box = browse_rollouts(g)
    slider, out, texts = box.children
    assert slider.max == 1 and len(out.outputs) == 1
    slider.value = 1  # moving the slider redraws
    assert len(out.outputs) == 1
    assert [t.value for t in texts.children] == g["texts"]


def test_clip_text():
    assert _clip_text("a\x17b  c") == "a·b c"
    s = _clip_text("x" * 50 + "y" * 500 + "z" * 50, n=100, width=1000)
    assert s.startswith("x" * 50) and s.endswith("z" * 50) and " … " in s
