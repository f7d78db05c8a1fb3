"""viz: overlays keep object colours, score bars carry the reference lines, curves read log_history and TensorBoard,
the evaluation browser opens a folder written by evaluate."""
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

from aurora_nb.config import get_config
from aurora_nb.evaluate import evaluate
from aurora_nb.viz import GT_COLOR, eval_view, overlay_strip, plot_curves, read_log_history, score_bars


def test_overlay_strip_keeps_colours_inside_and_draws_both_masks():
    frames = np.full((4, 16, 16, 3), 200, np.uint8); frames[..., 0] = 50
    gt = np.zeros((4, 16, 16), np.uint8); gt[:, 4:12, 4:12] = 1
    fig = overlay_strip(frames, gt, gt[:, ::-1], n=4)
    assert len(fig.axes) == 8
    img = fig.axes[0].images[0].get_array()
    assert tuple(img[8, 8]) == (50, 200, 200) and tuple(img[4, 6]) == GT_COLOR and img[0, 0].max() < 200
    plt.close(fig)


def test_score_bars_draw_reference_lines():
    cfg = get_config("tiny")
    ref = {p: evaluate(None, cfg, "test_s", predictor=p, limit=4) for p in ("union", "full")}
    ax = score_bars({"union": ref["union"]}, {"full": ref["full"]}, "J")
    assert len(ax.patches) >= 1 and len(ax.collections) == 1  # one bar group, one reference line
    assert ax.collections[0].get_segments()[0][0][1] == pytest.approx(ref["full"]["J"])
    plt.close("all")


def test_curves_from_log_history_and_tensorboard(tmp_path):
    hist = [dict(step=s, loss=1.0 / (s + 1)) for s in range(5)]
    assert read_log_history(hist).value.tolist() == [1.0 / (s + 1) for s in range(5)]
    from torch.utils.tensorboard import SummaryWriter
    w = SummaryWriter(str(tmp_path))
    for s in range(3): w.add_scalar("train/loss", 3.0 - s, s)
    w.close()
    d = read_log_history(tmp_path)
    assert d[d.key == "train/loss"].value.tolist() == [3.0, 2.0, 1.0]
    ax = plot_curves(tmp_path)
    assert len(ax.lines) == 1
    plt.close("all")


def test_eval_view_reads_an_evaluation_folder(tmp_path):
    cfg = get_config("tiny")
    evaluate(None, cfg, "test_s", out_dir=tmp_path, predictor="union", limit=2)
    fig, item = eval_view(tmp_path, 1)
    assert len(fig.axes) == 10 and "union" in fig._suptitle.get_text()
    plt.close(fig)
