"""Metrics: hand-computed cases for every convention, fast F == direct F, the cv2 resize, streaming == batch,
and parity with a literal re-statement of the official protocol (the references chapter, section "Evaluation protocol")."""
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aurora_nb.metrics import (F_THRESHOLDS, PROTOCOLS, RefAVSEvaluator, _resize_gt8, f_curve_direct, f_curves, f_measure,
                               frame_iou, get_protocol, mask_iou, null_s, official_gt, read_gt_official,
                               resize_logits, results_table, score_split, threshold_buckets)

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "The literal 255-pass F issues thousands of small ops; with two busy cores, intra-op threads only add waiting."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


LOGIT_04 = float(np.float32(math.log(0.4 / 0.6)))  # float32 sigmoid is exactly float32(0.4)
P04 = float(np.float32(0.4))


def full(t, h, w, v, dtype=torch.float32):
    return torch.full((t, h, w), v, dtype=dtype)


def masks(t, h, w, boxes=()):
    "uint8 {0,1} [t, h, w] with (frame, y0, y1, x0, x1) boxes set."
    g = np.zeros((t, h, w), np.uint8)
    for f, y0, y1, x0, x1 in boxes: g[f, y0:y1, x0:x1] = 1
    return g


# ---------------------------------------------------------------- a literal re-statement of the official protocol
def ref_official(preds, gts, null=False):
    "Spec-literal official pipeline: cv2 BGR read path, batches of 4, (N,1,H,W) tensors, AverageMeter sums."
    js, fs, ss = 0.0, 0.0, []
    nb = 0
    for b in range(0, len(preds), 4):
        xs, ys = [], []
        for r in range(b, min(b + 4, len(preds))):
            x = torch.as_tensor(preds[r]).float()
            if x.shape[-2:] != (256, 256):
                x = F.interpolate(x[:, None], size=(256, 256), mode="bilinear", align_corners=False)[:, 0]
            xs.append(x)
            if not null:
                fr = []
                for g in gts[r]:
                    bgr = cv2.cvtColor(g * np.uint8(255), cv2.COLOR_GRAY2BGR)  # the PNG values {0, 255}
                    fr.append(torch.as_tensor(cv2.cvtColor(cv2.resize(bgr, (256, 256)), cv2.COLOR_BGR2GRAY) > 0,
                                              dtype=torch.float32))
                ys.append(torch.stack(fr))
        X = torch.cat(xs).view(-1, 1, 256, 256)
        nb += 1
        if null:
            P = (torch.sigmoid(X) > 0.5).int()
            ss.append(torch.sqrt(torch.sum(P.view(-1)) / P.view(-1).shape[0]).numpy())
            continue
        Y = torch.cat(ys).view(-1, 1, 256, 256)
        # J
        pred, tgt = X.view(-1, 256, 256), Y.view(-1, 256, 256)
        n = pred.size(0)
        empty = tgt.sum(2).sum(1) == 0
        P = (torch.sigmoid(pred) > 0.4).int()
        inter = (P * tgt).sum(2).sum(1)
        union = torch.max(P, tgt).sum(2).sum(1)
        inter[empty] = ((1 - tgt) * (1 - P)).sum(2).sum(1)[empty]
        union[empty] = 256 * 256
        js = js + torch.sum(inter / (union + 1e-7)) / n
        # F
        p = torch.sigmoid(pred)
        avg, cnt, score = 0.0, 0, torch.zeros(255)
        for i in range(n):
            if torch.mean(tgt[i]) == 0.0: continue
            avg = avg + f_curve_direct(p[i], tgt[i])
            cnt += 1
            score = avg / cnt
        fs += score.max().item()
    if null: return dict(S=float(np.mean(np.array(ss))))
    return dict(J=100 * (js / nb).item(), F=fs / nb)


def random_split(n_rows, t=3, h=60, w=90, seed=0, size=256, empty_rows=(), native=False):
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for r in range(n_rows):
        g = np.zeros((t, h, w), np.uint8)
        for f in range(t):
            if r in empty_rows or rng.random() < 0.25: continue
            y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
            g[f, y0:y0 + rng.integers(2, h // 2), x0:x0 + rng.integers(2, w // 2)] = 1
        gts.append(g)
        s = (h, w) if native else (size, size)
        base = F.interpolate(torch.from_numpy(g).float()[:, None], size=s, mode="bilinear")[:, 0]
        preds.append((base * 2 - 1) * 3 + torch.from_numpy(rng.normal(0, 2, (t, *s))).float())
    return preds, gts


# ---------------------------------------------------------------- GT resize
@pytest.mark.parametrize("h,w", [(720, 1280), (256, 256), (100, 37), (31, 400), (257, 255)])
def test_gt_resize_matches_cv2_bgr_chain(h, w, tmp_path):
    rng = np.random.default_rng(h * w)
    for g in (rng.integers(0, 2, (2, h, w)).astype(np.uint8) * 255,  # {0,255} speckle: worst case for rounding
              rng.integers(0, 256, (2, h, w)).astype(np.uint8)):  # any 8-bit values
        ours = _resize_gt8(g)
        for i, m in enumerate(g):
            bgr = cv2.resize(cv2.cvtColor(m, cv2.COLOR_GRAY2BGR), (256, 256), interpolation=cv2.INTER_LINEAR)
            assert (bgr[..., 0] == bgr[..., 1]).all() and (bgr[..., 1] == bgr[..., 2]).all()
            assert torch.equal(ours[i], torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) > 0))
            assert torch.equal(ours[i], torch.from_numpy(cv2.resize(m, (256, 256)) > 0))
    cv2.imwrite(str(tmp_path / "m.png"), g[0] // 128 * 255)  # a {0,255} PNG through imread
    assert torch.equal(read_gt_official(tmp_path / "m.png"), official_gt(g[:1] // 128)[0])  # {0, 1} in
    speckle = rng.integers(0, 2, (2, h, w)).astype(np.uint8)
    assert torch.equal(official_gt(speckle), _resize_gt8(speckle * 255))  # {0, 1} -> {0, 255} before the resize
    assert torch.equal(official_gt(speckle.astype(bool)), official_gt(speckle))


def test_gt_input_checks():
    with pytest.raises(ValueError, match=r"values up to 255.*\{0, 1\}"): official_gt(np.full((1, 4, 4), 255, np.uint8))
    assert torch.equal(official_gt(np.ones((1, 4, 4), np.uint8), None), torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="uint8"): official_gt(np.ones((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W\]"): official_gt(np.zeros((4, 4), np.uint8))
    assert torch.equal(official_gt(np.ones((1, 4, 4), bool), None), torch.ones(1, 4, 4, dtype=torch.bool))
    assert official_gt(np.zeros((2, 9, 5), np.uint8), None).shape == (2, 9, 5)


def test_bilinear_then_gt0_dilates():
    g = masks(1, 20, 20, [(0, 5, 15, 5, 15)])
    up = official_gt(g, 64)[0]
    assert up.sum() > (torch.from_numpy(cv2.resize(g[0], (64, 64))) >= 128).sum()


def test_pred_resize_is_bilinear_align_corners_false():
    x = torch.randn(2, 40, 70)
    ref = F.interpolate(x[:, None], size=(256, 256), mode="bilinear", align_corners=False)[:, 0]
    assert torch.equal(resize_logits(x, (256, 256)), ref)
    g = masks(2, 30, 50, [(0, 0, 10, 0, 10)])
    a = score_split([x], [g])
    b = score_split(ref[None], [g])
    assert a == b


# ---------------------------------------------------------------- J
def test_j_hand_cases_and_empty_gt():
    gt = torch.zeros(3, 4, 4, dtype=torch.bool); gt[0, :2, :2] = True
    x = torch.full((3, 4, 4), -9.0); x[0, :2, :3] = 9.0; x[1, 0, 0] = 9.0
    ious = frame_iou(torch.sigmoid(x), gt)
    assert ious.tolist() == pytest.approx([4 / 6, 15 / 16, 1.0], abs=1e-6)
    assert ious.dtype == torch.float32
    assert float(mask_iou(torch.sigmoid(x), gt)) == pytest.approx((4 / 6 + 15 / 16 + 1) / 3, abs=1e-6)


def test_exact_04_is_not_foreground_for_j():
    p = torch.sigmoid(full(2, 8, 8, LOGIT_04))
    assert (p == P04).all()  # the precondition: exactly float32(0.4), vector path and tail alike
    above = torch.sigmoid(full(1, 8, 8, float(np.nextafter(np.float32(LOGIT_04), np.float32(1)) + 1e-7)))
    gt = torch.ones(1, 8, 8, dtype=torch.bool)
    assert float(mask_iou(p[:1], gt)) == 0.0
    assert float(mask_iou(above, gt)) == pytest.approx(1.0, abs=1e-6) and (above > P04).all()
    g = np.full((2, 256, 256), 1, np.uint8)
    assert score_split(full(1, 256, 256, LOGIT_04)[None].repeat(1, 2, 1, 1), [g])["J"] == 0.0


def test_exact_05_strict_for_j_and_s_but_included_in_f():
    x = torch.zeros(1, 2, 64, 64)  # sigmoid(0) = 0.5 exactly
    g = np.full((2, 64, 64), 1, np.uint8)
    assert score_split(x, [g], protocol="per_expression")["J"] == pytest.approx(100.0, abs=1e-4)  # 0.5 > 0.4
    assert score_split(x, [g], protocol="aurora_code")["J"] == 0.0  # 0.5 is not > 0.5
    assert score_split(x, [g], protocol="avsbench")["J"] == 0.0
    assert score_split(x, None, null=True)["S"] == 0.0
    assert F_THRESHOLDS[127].item() == 0.5
    c = f_curves(torch.full((1, 4, 4), 0.5), torch.ones(1, 4, 4, dtype=torch.bool))[0]
    assert c[127].item() == 1.0 and c[128].item() == 0.0  # >= at θ = 0.5, nothing above it


# ---------------------------------------------------------------- F
def test_empty_gt_counts_in_j_but_not_in_f():
    full_gt = masks(1, 256, 256, [(0, 0, 128, 0, 256)])
    empty = masks(1, 256, 256)
    x = torch.full((1, 1, 256, 256), -9.0); x[0, 0, :128] = 9.0  # perfect on frame 0
    xe = torch.full((1, 1, 256, 256), 9.0)  # everything predicted on the empty-GT frame
    r = score_split(torch.cat([x, xe]).view(1, 2, 256, 256), [np.concatenate([full_gt, empty])])
    assert r["J"] == pytest.approx(50.0, abs=1e-4)  # (1 + 0) / 2: the empty frame counts with IoU 0
    assert r["F"] == pytest.approx(1.0, abs=1e-6)  # the empty frame is skipped
    assert (r["n_empty_gt_frames"], r["n_f_frames"]) == (1, 1)


def test_all_empty_batch_scores_f_zero():
    preds, gts = random_split(6, empty_rows=range(4))  # batch 0 all empty, batch 1 not
    r = score_split(torch.stack(preds), gts)
    ev = RefAVSEvaluator().update(torch.stack(preds), gts)
    ev.compute()
    assert ev.groups[0]["F"] == 0.0 and ev.groups[0]["n_f_frames"] == 0
    assert r["F"] == pytest.approx(ev.groups[1]["F"] / 2, abs=0)
    assert r["n_f_empty_batches"] == 1 and r["n_empty_rows"] == 4
    assert score_split(torch.stack(preds[:4]), gts[:4])["F"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fast_f_bit_equal_to_direct(seed):
    g = torch.Generator().manual_seed(seed)
    n = 6
    logits = torch.randn(n, 48, 48, generator=g) * (1 + 8 * seed)  # seed 3 saturates to exactly 0 and 1
    probs = torch.sigmoid(logits)
    ties = torch.rand(n, 48, 48, generator=g) < 0.3  # a third of the pixels exactly on a threshold
    probs[ties] = F_THRESHOLDS[torch.randint(0, 255, (int(ties.sum()),), generator=g)]
    gt = torch.rand(n, 48, 48, generator=g) < 0.4
    gt[1] = False  # an empty-GT frame
    direct = torch.stack([f_curve_direct(p, y) for p, y in zip(probs, gt)])
    assert torch.equal(f_curves(probs, gt), direct)
    assert f_measure(probs, gt, "fast") == f_measure(probs, gt, "direct")
    assert f_measure(logits, gt, "fast") == f_measure(logits, gt, "direct")  # raw logits (AURORA)


def test_threshold_buckets_equal_searchsorted_near_every_threshold():
    th = F_THRESHOLDS.numpy()
    bits = th.view(np.int32)
    near = (bits[:, None] + np.arange(-64, 65, dtype=np.int32)[None]).ravel().view(np.float32)
    near = near[~np.isnan(near)]  # bit patterns below +0.0 are NaNs; -near covers the negative side
    near = torch.from_numpy(np.concatenate([near, -near, near * 254, [0.0, -0.0, 1e-45, 2.0, np.inf, -np.inf]]))
    assert torch.equal(threshold_buckets(near.float()), torch.searchsorted(F_THRESHOLDS, near.float(), right=True))
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    assert torch.equal(threshold_buckets(u), torch.searchsorted(F_THRESHOLDS, u, right=True))


def test_f_is_max_of_mean_curve_not_mean_of_max():
    gt = torch.ones(2, 1, 2, dtype=torch.bool); gt[:, 0, 1] = False  # one positive, one negative pixel each
    p = torch.tensor([[[0.9, 0.6]], [[0.3, 0.1]]])  # each frame is perfect on a disjoint threshold range
    c = f_curves(p, gt)
    fv, n = f_measure(p, gt)
    assert n == 2 and fv == pytest.approx(c.mean(0).max().item(), abs=1e-7)
    assert fv < c.max(1).values.mean().item()


# ---------------------------------------------------------------- S
def test_s_pooled_per_batch_not_per_frame():
    p = torch.zeros(4, 8, 8); p[0] = 1.0  # one frame fully predicted: ratio 1/4
    assert float(null_s(p)) == 0.5
    assert float(null_s(p, mode="frame_sqrt")) == 0.25
    x = torch.full((8, 1, 16, 16), -9.0); x[0, 0] = 9.0  # rows 0..3 form batch 0 (one full frame), batch 1 empty
    r = score_split(x, None, null=True)
    assert r["S"] == pytest.approx(0.5 * math.sqrt(1 / 4), abs=1e-7)  # mean over batches of the pooled sqrt
    assert r["S"] != pytest.approx(math.sqrt(1 / 8))  # not pooled over the split
    pe = score_split(x, None, null=True, protocol="per_expression")
    assert pe["S"] == pytest.approx(1 / 8, abs=1e-7) and pe["n_batches"] == 8


# ---------------------------------------------------------------- grouping, rows, protocols
def test_partial_last_batch_weighs_as_a_full_one():
    good = torch.full((1, 256, 256), -9.0); good[0, :64] = 9.0
    g = masks(1, 256, 256, [(0, 0, 64, 0, 256)])
    preds = [good] * 4 + [-good]  # rows 0..3 perfect, row 4 wrong everywhere
    r = score_split(torch.stack(preds), [g] * 5)
    assert (r["n_batches"], r["last_batch_rows"]) == (2, 1)
    assert r["J"] == pytest.approx(50.0, abs=1e-4)  # (1 + 0) / 2, not 4/5
    assert score_split(torch.stack(preds), [g] * 5, protocol="per_expression")["J"] == pytest.approx(80.0, abs=1e-4)


def test_duplicate_rows_both_count():
    a = (torch.full((1, 2, 32, 32), 9.0), masks(2, 32, 32, [(0, 0, 16, 0, 32), (1, 0, 32, 0, 32)]))  # IoU .5, 1
    b = (torch.full((1, 2, 32, 32), -9.0), masks(2, 32, 32, [(0, 0, 8, 0, 8), (1, 0, 8, 0, 8)]))  # IoU 0, 0
    x = torch.cat([a[0], a[0], b[0]])
    r = score_split(x, [a[1], a[1], b[1]], protocol="per_expression")
    assert r["n_rows"] == 3 and r["J"] == pytest.approx(100 * (0.75 + 0.75 + 0) / 3, abs=1e-4)


def test_non_square_native_masks_per_expression():
    g1 = masks(2, 48, 80, [(0, 10, 30, 20, 60), (1, 0, 48, 0, 40)])
    g2 = masks(2, 30, 20, [(0, 0, 15, 0, 20)])  # a second row at another native size
    y1 = torch.from_numpy(g1 > 0).float()
    x1 = y1 * 18 - 9  # perfect logits at native size
    x1_low = F.interpolate(x1[:, None], size=(24, 40), mode="bilinear", align_corners=False)[:, 0]
    x2 = torch.from_numpy(g2 > 0).float() * 18 - 9
    r = score_split([x1, x2], [g1, g2], protocol="per_expression")
    assert r["J"] == pytest.approx(100.0, abs=1e-4) and r["F"] == pytest.approx(1.0, abs=1e-6)
    assert r["n_empty_gt_frames"] == 1 and r["n_empty_rows"] == 0
    low = score_split([x1_low], [g1], protocol="per_expression")  # resized to 48×80 before scoring
    manual = F.interpolate(x1_low[:, None], size=(48, 80), mode="bilinear", align_corners=False)[:, 0]
    want = float(mask_iou(torch.sigmoid(manual), torch.from_numpy(g1 > 0)))
    assert low["J"] == pytest.approx(100 * want, abs=1e-9)
    with pytest.raises(ValueError, match="one frame size"):  # the official grouping cannot mix native sizes
        score_split([x1, x2], [g1, g2], protocol="official", size=None)


def test_per_expression_all_empty_row_scores_f_zero_and_is_counted():
    preds, gts = random_split(5, empty_rows=(1, 3), native=True)
    r = score_split(preds, gts, protocol="per_expression")
    ev = RefAVSEvaluator(protocol="per_expression").update(preds, gts)
    ev.compute()
    assert [g["F"] for g in ev.groups][1] == 0.0 and ev.groups[3]["F"] == 0.0
    assert r["n_empty_rows"] == 2 and r["n_f_empty_batches"] == 2
    assert r["F"] == pytest.approx(np.mean([g["F"] for g in ev.groups]), abs=1e-12)


def test_aurora_code_f_on_raw_logits():
    preds, gts = random_split(3, native=True, seed=4)
    a = score_split(preds, gts, protocol="aurora_code")
    b = score_split(preds, gts, protocol="per_expression", j_threshold=0.5)
    assert a["J"] == b["J"] and a["F"] != b["F"]
    assert a["options"]["f_on_logits"] and not b["options"]["f_on_logits"]
    with pytest.raises(ValueError, match="no null metric"): score_split(preds, None, null=True, protocol="aurora_code")


def test_avsbench_is_per_video_at_224_with_threshold_05():
    preds, gts = random_split(3, t=5, h=224, w=224, size=224, seed=5)
    r = score_split(torch.stack(preds), gts, protocol="avsbench")
    js = [float(mask_iou(torch.sigmoid(x), official_gt(g, 224), 0.5)) for x, g in zip(preds, gts)]
    assert r["n_batches"] == 3 and r["J"] == pytest.approx(100 * np.mean(js), abs=1e-4)
    assert get_protocol("avsbench").size == 224 and PROTOCOLS["official"].group_rows == 4


# ---------------------------------------------------------------- parity with the literal official pipeline
@pytest.mark.parametrize("n_rows,seed", [(8, 0), (7, 1), (5, 2)])
def test_official_parity_exact(n_rows, seed):
    preds, gts = random_split(n_rows, seed=seed, size=256, empty_rows=(2,))
    ours = score_split(torch.stack(preds), gts)
    ref = ref_official(preds, gts)
    assert ours["J"] == ref["J"] and ours["F"] == ref["F"]  # bit-equal, accumulation order included
    low = [F.interpolate(p[:, None], size=(64, 64), mode="bilinear")[:, 0] for p in preds]
    assert score_split(torch.stack(low), gts)["F"] == ref_official(low, gts)["F"]
    sn = score_split(torch.stack(preds), None, null=True)
    assert sn["S"] == ref_official(preds, None, null=True)["S"]


# ---------------------------------------------------------------- streaming
@pytest.mark.parametrize("protocol", ["official", "per_expression"])
@pytest.mark.parametrize("sizes", [[1, 1, 1, 1, 1, 1, 1, 1, 1], [3, 5, 1], [2, 7], [9]])
def test_evaluator_streaming_equals_score_split(protocol, sizes):
    preds, gts = random_split(9, seed=7)
    want = score_split(torch.stack(preds), gts, protocol=protocol)
    ev = RefAVSEvaluator(protocol=protocol, n_rows=9)
    i = 0
    for s in sizes:
        ev.update(torch.stack(preds[i:i + s]), gts[i:i + s]); i += s
    assert ev.compute() == want
    order = [8, 0, 5, 1, 2, 7, 3, 4, 6]  # out of order, keyed by split position
    ev = RefAVSEvaluator(protocol=protocol)
    for k in range(0, 9, 2):
        idx = order[k:k + 2]
        ev.update([preds[r] for r in idx], [gts[r] for r in idx], indices=idx)
    assert ev.compute() == want
    nul = score_split(torch.stack(preds), None, null=True, protocol=protocol)
    ev = RefAVSEvaluator(null=True, protocol=protocol)
    ev.update(torch.stack(preds[:5]), None).update(torch.stack(preds[5:]), None)
    assert ev.compute() == nul


def test_evaluator_errors_name_the_row():
    preds, gts = random_split(3)
    ev = RefAVSEvaluator(n_rows=3).update(preds[:1], gts[:1], indices=[0])
    with pytest.raises(ValueError, match="split position 0 was given twice"): ev.update(preds[:1], gts[:1], indices=[0])
    with pytest.raises(ValueError, match=r"split positions never given: \[1\]"):
        RefAVSEvaluator(n_rows=3).update(preds[:1], gts[:1], indices=[2]).update(preds[:1], gts[:1], indices=[0]).compute()
    with pytest.raises(ValueError, match="outside the split"): ev.update(preds[:1], gts[:1], indices=[3])
    with pytest.raises(ValueError, match=r"gt_masks\[0\]: values up to 255"):
        RefAVSEvaluator().update(preds[:1], [gts[0] * 255])  # PNG values are refused, not silently rescaled
    with pytest.raises(ValueError, match="gt_masks are needed"): RefAVSEvaluator().update(preds[:1])
    with pytest.raises(ValueError, match="frames"): score_split([preds[0][:2]], gts[:1])
    nan = preds[0].clone(); nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"): score_split([nan], gts[:1])
    with pytest.raises(ValueError, match="unknown protocol"): score_split(preds, gts, protocol="offical")


# ---------------------------------------------------------------- results table
def test_results_table_values():
    seen = dict(J=34.20, F=0.513, protocol="official")
    unseen = dict(J=49.54, F=0.648, protocol="official")
    t = results_table(seen, unseen, dict(S=0.007, protocol="official"))
    df = t.frame
    assert list(df.index) == ["Seen", "Unseen", "Mix", "Null"]
    assert df.loc["Mix", "J (%)"] == pytest.approx(41.87)
    assert df.loc["Mix", "F"] == pytest.approx(0.5805)
    assert df.loc["Seen", "J&F"] == pytest.approx(42.75) and df.loc["Unseen", "J&F"] == pytest.approx(57.17)
    assert df.loc["Mix", "J&F"] == pytest.approx((42.75 + 57.17) / 2)
    assert df.loc["Null", "S ↓"] == 0.007 and np.isnan(df.loc["Seen", "S ↓"])
    assert "| Mix    | 41.87" in t.markdown and "Protocol: official." in t.markdown
    only = results_table(seen)
    assert list(only.frame.index) == ["Seen"]
    preds, gts = random_split(4)
    r = score_split(torch.stack(preds), gts)
    assert results_table(r, r).frame.loc["Mix", "J&F"] == pytest.approx(r["JF"])
