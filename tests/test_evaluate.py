"""Evaluation: evaluate == score_split on the model's own logits (the stored cells are exact at every threshold of
every preset), the reference predictors' official J/F/S, resume equality, re-scoring from the stored PNGs, the
right-class rate read from the model's own words, the device rule, the audio probe, infer on an MP4 and on
frames + WAV, and clear CLI errors."""
import argparse
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import aurora_nb.evaluate as E
import aurora_nb.model
from aurora_nb.cot import build_messages
from aurora_nb.config import ConfigError, get_config
from aurora_nb.data import RefAVSDataset, write_video_clip
from aurora_nb.metrics import F_THRESHOLDS, resize_logits, score_split, threshold_buckets
from aurora_nb.model import Prediction, build_model, save_pretrained


@pytest.fixture(scope="session")
def cfg():
    return get_config("tiny", ["eval.max_new_tokens=4"])  # an untrained model never stops by itself


@pytest.fixture(scope="session")
def tiny(cfg, tmp_path_factory):
    "An untrained tiny model and its save_pretrained folder, built once per session."
    torch.manual_seed(0)
    m = build_model(cfg)
    d = save_pretrained(m, tmp_path_factory.mktemp("tiny") / "model")
    return m, d


@pytest.fixture(scope="session")
def test_s(cfg):
    ds = RefAVSDataset.from_config(cfg.data, "test_s")
    return ds, [ds[i] for i in range(len(ds))]


def eval_args(**kw):
    a = dict(model=None, split="test_s", data=None, out=None, audio="real", predictor=None, limit=None, batch_size=None,
             preset="tiny", config=None, overrides=[], device=None)
    return argparse.Namespace(**{**a, **kw})


def infer_args(**kw):
    a = dict(model=None, video=None, frames=None, audio=None, expression="The object that sounds.", out=None,
             allow_silent=False, device=None)
    return argparse.Namespace(**{**a, **kw})


def test_parse_target():
    assert E.parse_target("Sounds high. The target is bell. It is bell [SEG].") == "bell"
    assert E.parse_target("It is hair-dryer [SEG].") == "hair-dryer"
    assert E.parse_target("It is [SEG].") is None and E.parse_target("") is None


class Placed(Exception):
    "Raised by a stand-in `run_device`: the loader went through `place`."


def _placed(device=None): raise Placed(device)


class StubModel(torch.nn.Linear):
    "Stands in for an AuroraModel where `predict` is patched: a module (so `place` can move it) with a config."
    def __init__(self, cfg):
        super().__init__(1, 1)
        self.config = cfg


def stub_predict(answer, prob=None):
    "A `predict` stand-in: every row answers `answer(item)` (own words, text) and predicts σ = prob everywhere (GT where None)."
    def predict(model, items, max_new_tokens=None, build_messages=None, **kw):
        out = []
        for it in items:
            own, text = answer(it)
            x = (torch.from_numpy(it["masks"]).float() * 60 - 30 if prob is None
                 else torch.full(it["masks"].shape, math.log(prob / (1 - prob))))
            out.append(Prediction(text=text, used_fallback=own != text, mask_logits=x.float(), seg_embedding=torch.zeros(4),
                                  generated=own if own != text else None))
        return out
    return predict


def test_stored_cells_keep_every_decision_of_every_preset():
    eps = 1e-6
    ps = [0.5005, 0.4 - eps, 0.4, 0.4 + eps, 0.5 - eps, 0.5, 0.5 + eps]
    ps += [t + d for t in F_THRESHOLDS[1:-1].tolist() for d in (-eps, 0.0, eps)]
    x = torch.log(torch.tensor(ps, dtype=torch.float64) / (1 - torch.tensor(ps, dtype=torch.float64))).float()
    x = torch.cat([x, F_THRESHOLDS, F_THRESHOLDS - eps, F_THRESHOLDS + eps, torch.tensor([0.0, -30.0, 30.0, -1e-30, 1e-30])])
    x = x.view(1, 1, -1)
    back = E.cells_to_logits(E.logits_to_cells(x))
    for t in (0.4, 0.5):
        assert torch.equal(torch.sigmoid(back) > t, torch.sigmoid(x) > t), t  # J (0.4, 0.5) and S (0.5)
    assert torch.equal(threshold_buckets(torch.sigmoid(back)), threshold_buckets(torch.sigmoid(x)))  # F on sigmoid
    assert torch.equal(threshold_buckets(back), threshold_buckets(x))  # F on raw logits (aurora_code)
    assert bool(torch.sigmoid(back)[0, 0, 0] > 0.5)  # p = 0.5005 stays foreground


def test_stored_cells_score_like_the_raw_logits(test_s):
    _, items = test_s
    gts = [it["masks"] for it in items]
    g = torch.Generator().manual_seed(3)
    soft = [torch.randn(10, 256, 256, generator=g) * 1.5 for _ in gts]
    stored = [E.cells_to_logits(E.logits_to_cells(x)) for x in soft]
    for proto in ("official", "per_expression", "aurora_code", "avsbench"):
        kw = {} if proto == "official" else dict(size=256)
        a, b = score_split(soft, gts, protocol=proto, **kw), score_split(stored, gts, protocol=proto, **kw)
        assert (a["J"], a["F"]) == (b["J"], b["F"]), proto
    null = [torch.full((10, 256, 256), math.log(0.5005 / 0.4995)) for _ in range(4)]
    assert score_split([E.cells_to_logits(E.logits_to_cells(x)) for x in null], None, null=True)["S"] == 1.0


def test_evaluate_scores_s_and_the_0_5_threshold_exactly(cfg, monkeypatch):
    monkeypatch.setattr(E, "predict", stub_predict(lambda it: ("It is [SEG].",) * 2, prob=0.5005))
    m = E.evaluate(StubModel(cfg), cfg, "test_n")
    assert m["S"] == 1.0  # every pixel has σ = 0.5005 > 0.5: the whole frame is foreground
    monkeypatch.setattr(E, "predict", stub_predict(lambda it: ("It is [SEG].",) * 2, prob=0.4995))
    assert E.evaluate(StubModel(cfg), cfg, "test_n")["S"] == 0.0
    aur = get_config("tiny", ["eval.max_new_tokens=4", "eval.protocol=aurora_code"])
    monkeypatch.setattr(E, "predict", stub_predict(lambda it: ("It is [SEG].",) * 2, prob=0.5005))
    got = E.evaluate(StubModel(aur), aur, "test_s")
    ds = RefAVSDataset.from_config(aur.data, "test_s")
    gts = [ds[i]["masks"] for i in range(len(ds))]
    want = score_split([torch.full(g.shape, math.log(0.5005 / 0.4995)) for g in gts], gts, protocol="aurora_code")
    assert got["J"] == want["J"] / 100 and got["F"] == want["F"] and got["fg_share"] == 1.0


def test_right_class_rate_reads_the_models_own_words(cfg, monkeypatch):
    def cut(it):  # the answer names the right class but is cut off before the period; the fallback is appended
        own = f"The sound is low. The target is {it['category']}"
        return own, own + " It is [SEG]."
    monkeypatch.setattr(E, "predict", stub_predict(cut))
    m = E.evaluate(StubModel(cfg), cfg, "test_s")
    assert m["right_class_rate"] == 0.0 and m["n_parse_failures"] == m["n_rows"] == m["n_fallbacks"]
    def done(it):
        own = f"The sound is low. The target is {it['category']}. It is [SEG]."
        return own, own
    monkeypatch.setattr(E, "predict", stub_predict(done))
    m = E.evaluate(StubModel(cfg), cfg, "test_s")
    assert m["right_class_rate"] == 1.0 and m["n_parse_failures"] == 0 == m["n_fallbacks"]


def test_eval_and_infer_place_the_model(cfg, tiny, test_s, tmp_path, monkeypatch):
    _, d = tiny
    monkeypatch.setattr(aurora_nb.model, "run_device", _placed)
    with pytest.raises(Placed) as e: E.eval_main(eval_args(model=str(d), limit=1))
    assert e.value.args == ("auto",)
    with pytest.raises(Placed) as e: E.eval_main(eval_args(model=str(d), limit=1, device="cpu"))
    assert e.value.args == ("cpu",)
    it = test_s[1][0]
    write_video_clip(tmp_path / "clip.mp4", it["frames"], it["audio"])
    with pytest.raises(Placed): E.infer_main(infer_args(model=str(d), video=str(tmp_path / "clip.mp4")))
    with pytest.raises(Placed): E.evaluate(StubModel(cfg), cfg, "test_s", limit=1)  # the pipeline's path: a loaded model
    assert E.evaluate(None, cfg, "test_s", predictor="empty", limit=1)["n_rows"] == 1  # a predictor needs no device


def test_png8_keeps_the_official_j_threshold_exactly():
    p = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    p[0, 0, :4] = torch.tensor([0.4, float(np.nextafter(np.float32(0.4), np.float32(1))), 0.0, 1.0])
    back = torch.sigmoid(E.png8_to_logits(E.probs_to_png8(p)))
    assert torch.equal(back > 0.4, p > 0.4)
    assert back[0, 0, 2] < 1 / 254 and back[0, 0, 3] == 1.0  # 0 stays below every F threshold but θ0, 1 stays 1
    assert (back - p).abs().max() <= 0.5 / 255 + 1e-6


def test_thresholds_live_in_the_protocol_only():
    with pytest.raises(ConfigError, match="j_threshold"): get_config("tiny", ["eval.j_threshold=0.5"])
    with pytest.raises(ConfigError, match="batch_rows"): get_config("tiny", ["eval.batch_rows=4"])


def test_evaluate_equals_score_split_on_the_same_masks(cfg, test_s):
    ds, items = test_s
    for name in ("union", "random-object"):
        got = E.evaluate(None, cfg, "test_s", predictor=name)
        logits = [E.reference_logits(name, it, ds.root, E.read_annotations(ds.root)) for it in items]
        want = score_split(logits, [it["masks"] for it in items])
        assert got["J"] == want["J"] / 100 and got["F"] == want["F"]
    a = E.evaluate(None, cfg, "test_s", predictor="random-object", seed=0)
    b = E.evaluate(None, cfg, "test_s", predictor="random-object", seed=1)
    assert a["J"] != b["J"]  # the seed picks the object


def test_model_evaluate_equals_score_split_of_its_stored_predictions(cfg, tiny, test_s):
    model, _ = tiny
    ds, items = test_s
    got = E.evaluate(model, cfg, "test_s", limit=5, batch_size=2)
    preds = E.predict(model, items[:5], max_new_tokens=4, build_messages=build_messages)
    want = score_split([p.mask_logits for p in preds], [it["masks"] for it in items[:5]])  # the raw logits
    assert got["J"] == want["J"] / 100 and got["F"] == want["F"]
    assert got["n_rows"] == 5 and got["n_fallbacks"] == sum(p.used_fallback for p in preds)
    assert got["n_parse_failures"] == sum(E.parse_target(p.own_text) is None for p in preds)


def test_empty_and_full_give_the_official_scores_of_all0_all1_masks(cfg, test_s):
    ds, items = test_s
    gts = [it["masks"] for it in items]
    for name, v in (("empty", 0), ("full", 1)):
        got = E.evaluate(None, cfg, "test_s", predictor=name)
        want = score_split([torch.full(g.shape, 30.0 if v else -30.0) for g in gts], gts)
        assert got["J"] == want["J"] / 100 and got["F"] == want["F"]
    empty = E.evaluate(None, cfg, "test_s", predictor="empty")
    groups = [np.concatenate(gts[i:i + 4]) for i in range(0, len(gts), 4)]  # J of nothing = share of empty-GT frames
    assert empty["J"] == pytest.approx(np.mean([(~g.reshape(len(g), -1).any(1)).mean() for g in groups]), abs=1e-6)
    assert E.evaluate(None, cfg, "test_n", predictor="empty")["S"] == 0.0
    assert E.evaluate(None, cfg, "test_n", predictor="full")["S"] == 1.0


def test_right_object_rate(cfg):
    m = E.evaluate(None, cfg, "test_u", predictor="union")
    r = E.evaluate(None, cfg, "test_u", predictor="random-object")
    assert 0 < r["right_object_rate"] < 1 and m["right_class_rate"] is None
    assert set(m["per_cue"]) <= {"audio", "visual", "temporal", "spatial", "mixed"}
    assert sum(v["n"] for v in m["per_cue"].values()) == m["n_rows"]


def test_resume_after_a_kill_gives_the_same_metrics(cfg, tiny, tmp_path, monkeypatch):
    model, _ = tiny
    full = E.evaluate(model, cfg, "test_s", out_dir=tmp_path / "a", batch_size=2, limit=7)
    calls = {"n": 0}
    real = E.predict

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2: raise KeyboardInterrupt("killed")
        return real(*a, **k)
    monkeypatch.setattr(E, "predict", dying)
    with pytest.raises(KeyboardInterrupt): E.evaluate(model, cfg, "test_s", out_dir=tmp_path / "b", batch_size=2, limit=7)
    assert len(E.read_predictions(tmp_path / "b")) == 4 and not (tmp_path / "b" / E.METRICS_FILE).exists()
    with open(tmp_path / "b" / E.PREDICTIONS_FILE, "a") as f: f.write('{"index": 4, "ro')  # a line cut by the kill
    monkeypatch.setattr(E, "predict", real)
    resumed = E.evaluate(model, cfg, "test_s", out_dir=tmp_path / "b", batch_size=2, limit=7)
    assert json.loads((tmp_path / "b" / E.METRICS_FILE).read_text()) == json.loads((tmp_path / "a" / E.METRICS_FILE).read_text())
    assert {k: v for k, v in resumed.items() if k != "timing"} == {k: v for k, v in full.items() if k != "timing"}
    assert [r["index"] for r in E.read_predictions(tmp_path / "b")] == list(range(7))
    assert E.rescore(tmp_path / "b") == {k: v for k, v in full.items() if k != "timing"}
    with pytest.raises(ValueError, match="another evaluation"):
        E.evaluate(model, cfg, "test_s", out_dir=tmp_path / "b", audio="muted", limit=7)


def test_audio_probe_changes_the_audio(cfg, test_s):
    ds, items = test_s
    it = items[0]
    assert not E.apply_audio(it, "muted")["audio"].any()
    src = E.shuffled_sources(ds, 0)
    assert all(ds.samples[j].folder != ds.samples[i].folder for i, j in enumerate(src))
    assert not np.array_equal(E.apply_audio(it, "shuffled", ds, src)["audio"], it["audio"])
    r = dict(J=0.5, audio_required=dict(J_row=0.6, right_object=0.8))
    p = E.audio_probe(r, muted=dict(J=0.4, audio_required=dict(J_row=0.3, right_object=0.2)))
    assert p.loc["muted", "drop J (audio-required rows)"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="audio="): E.apply_audio(it, "loud")


def test_infer_on_a_pyav_mp4(tiny, test_s, tmp_path, capsys):
    _, d = tiny
    it = test_s[1][0]
    write_video_clip(tmp_path / "clip.mp4", it["frames"], it["audio"])
    assert E.infer_main(infer_args(model=str(d), video=str(tmp_path / "clip.mp4"), out=str(tmp_path / "out"))) == 0
    assert "answer:" in capsys.readouterr().out
    pngs = sorted((tmp_path / "out" / "masks").glob("*.png"))
    assert len(pngs) == 10 and np.asarray(Image.open(pngs[0])).shape == it["frames"].shape[1:3]
    assert set(np.unique(np.asarray(Image.open(pngs[0])))) <= {0, 255}
    gif = Image.open(tmp_path / "out" / "overlay.gif")
    assert gif.n_frames == 10
    assert json.loads((tmp_path / "out" / "answer.json").read_text())["expression"] == "The object that sounds."


def test_infer_on_frames_and_wav(tiny, test_s, tmp_path):
    _, d = tiny
    it = test_s[1][0]
    (tmp_path / "frames").mkdir()
    for t, f in enumerate(it["frames"]): Image.fromarray(f).save(tmp_path / "frames" / f"{t}.jpg")
    sf.write(tmp_path / "a.wav", it["audio"], 16000)
    clip = E.read_user_clip(frames=tmp_path / "frames", audio=tmp_path / "a.wav")
    assert clip["frames"].shape == it["frames"].shape and clip["audio"].shape == (160_000,)
    args = infer_args(model=str(d), frames=str(tmp_path / "frames"), audio=str(tmp_path / "a.wav"), out=str(tmp_path / "o"))
    assert E.infer_main(args) == 0 and len(list((tmp_path / "o" / "masks").glob("*.png"))) == 10
    assert E.infer_main(infer_args(model=str(d), frames=str(tmp_path / "frames"))) == 1  # no audio, no --allow-silent


def test_bad_inputs_exit_1_with_a_clear_message(tiny, test_s, tmp_path, capsys):
    _, d = tiny
    it = test_s[1][0]
    assert E.eval_main(eval_args(model=str(tmp_path / "nope"))) == 1
    assert "not an aurora_nb model folder" in capsys.readouterr().err
    assert E.eval_main(eval_args(model=str(d), split="test_x")) == 1
    assert "unknown split 'test_x'" in capsys.readouterr().err
    assert E.infer_main(infer_args(model=str(tmp_path / "nope"), video=str(tmp_path / "x.mp4"))) == 1
    assert "not an aurora_nb model folder" in capsys.readouterr().err
    write_video_clip(tmp_path / "silent.mp4", it["frames"])
    assert E.infer_main(infer_args(model=str(d), video=str(tmp_path / "silent.mp4"))) == 1
    assert "no audio track" in capsys.readouterr().err
    assert E.infer_main(infer_args(model=str(d), video=str(tmp_path / "silent.mp4"), allow_silent=True)) == 0
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert E.infer_main(infer_args(model=str(d), video=str(tmp_path / "bad.mp4"))) == 1
    assert "cannot open video" in capsys.readouterr().err
    write_video_clip(tmp_path / "short.mp4", it["frames"][:1], it["audio"][:8000], fps=2.0)  # half a second
    assert E.infer_main(infer_args(model=str(d), video=str(tmp_path / "short.mp4"))) == 1
    assert "need at least" in capsys.readouterr().err
    assert E.eval_main(eval_args(predictor="union", limit=4)) == 0
    assert "right_object_rate" in capsys.readouterr().out
