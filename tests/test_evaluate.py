"""Evaluation: evaluate == score_split on the same masks, the reference predictors' official J/F/S, resume equality,
re-scoring from the stored PNGs, the audio probe, infer on an MP4 and on frames + WAV, and clear CLI errors."""
import argparse
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import aurora_nb.evaluate as E
from aurora_nb.cot import build_messages
from aurora_nb.config import ConfigError, get_config
from aurora_nb.data import RefAVSDataset, write_video_clip
from aurora_nb.metrics import resize_logits, score_split
from aurora_nb.model import build_model, save_pretrained


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
             preset="tiny", config=None, overrides=[])
    return argparse.Namespace(**{**a, **kw})


def infer_args(**kw):
    a = dict(model=None, video=None, frames=None, audio=None, expression="The object that sounds.", out=None,
             allow_silent=False)
    return argparse.Namespace(**{**a, **kw})


def test_parse_target():
    assert E.parse_target("Sounds high. The target is bell. It is bell [SEG].") == "bell"
    assert E.parse_target("It is hair-dryer [SEG].") == "hair-dryer"
    assert E.parse_target("It is [SEG].") is None and E.parse_target("") is None


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
    stored = [E.png8_to_logits(E.probs_to_png8(torch.sigmoid(resize_logits(p.mask_logits, (256, 256))))) for p in preds]
    want = score_split(stored, [it["masks"] for it in items[:5]])
    assert got["J"] == pytest.approx(want["J"] / 100, abs=1e-7) and got["F"] == pytest.approx(want["F"], abs=1e-7)
    assert got["n_rows"] == 5 and got["n_fallbacks"] == sum(p.used_fallback for p in preds)
    assert got["n_parse_failures"] == sum(E.parse_target(p.text) is None for p in preds)


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
