"""Ref-AVS reader, audio/video decoding and the dataset validator (aurora_nb.data) on small generated benchmarks,
and on a few rows of the released metadata.csv (tests/fixtures/refavs_real_rows)."""
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image

from aurora_nb.cli import main as aurora_nb_main
from aurora_nb.data import (SPLITS, RefAVSDataError, RefAVSDataWarning, RefAVSDataset, category_from_uid, collate_clips,
                            folder_from_uid, load_audio, load_video_clip, read_metadata, read_samples, row_warnings,
                            validate_refavs, whisper_log_mel, write_video_clip)
from aurora_nb.synth import make_synthetic_refavs

REAL_ROWS = Path(__file__).parent / "fixtures" / "refavs_real_rows"  # 10 rows of the released metadata.csv (see fixtures/README.md)


@pytest.fixture(scope="module")
def real_format(tmp_path_factory):
    "A 4-clip benchmark with the real audio formats: 48 kHz stereo clips, 44.1 kHz mono null folders."
    root = tmp_path_factory.mktemp("real") / "refavs"
    make_synthetic_refavs(root, n_videos=4, seed=3, size=32, sample_rate=48000, channels=2, null_sample_rate=44100, null_channels=1)
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    "A cheap 4-clip benchmark (8 kHz mono) that the validator tests copy and break."
    root = tmp_path_factory.mktemp("small") / "refavs"
    make_synthetic_refavs(root, n_videos=4, seed=5, size=32, sample_rate=8000)
    return root


@pytest.fixture
def broken(small, tmp_path):
    "A fresh copy of `small` to break."
    dst = tmp_path / "broken"
    shutil.copytree(small, dst)
    return dst


def test_uid_rules():
    assert folder_from_uid("-a_b-c_14000_24000_hair-dryer_3") == "-a_b-c_14000_24000"
    assert category_from_uid("-a_b-c_14000_24000_hair-dryer_3") == "hair-dryer"
    assert folder_from_uid("null_m-x_1_2_null_4") == "null_m-x_1_2"
    with pytest.raises(RefAVSDataError, match="malformed uid"): folder_from_uid("nounderscore")


def test_loader_every_split(real_format):
    meta = read_metadata(real_format)
    for split in SPLITS:
        ds = RefAVSDataset(real_format, split)
        assert len(ds) == int((meta.split == split).sum()) > 0
        assert [s.row for s in ds.samples] == meta.row[meta.split == split].tolist()  # CSV order, row keys
        item = ds[0]
        assert item["frames"].shape == (10, 32, 32, 3) and item["frames"].dtype == np.uint8
        assert item["masks"].shape == (10, 32, 32) and item["masks"].dtype == np.uint8
        assert set(np.unique(item["masks"])) <= {0, 1}
        assert item["audio"].dtype == np.float32 and item["audio"].shape == (160_000,)
        for k in ("expression", "category", "uid", "vid", "fid", "split", "is_null", "row", "folder"): assert k in item
        assert item["split"] == split and item["row"] == ds.samples[0].row
        assert [s.index for s in ds.samples] == list(range(len(ds)))  # the evaluator's key: position in the split
        last = ds[len(ds) - 1]
        assert last["index"] == len(ds) - 1 and last["row"] == ds.samples[-1].row and item["index"] == 0
    with pytest.warns(RefAVSDataWarning, match="TODO"):  # every row, the TODO ones included (they are read, with a warning)
        everything = read_samples(real_format)
    assert [s.index for s in everything] == meta.groupby("split").cumcount().tolist()  # all rows


def test_real_audio_formats_become_16k_mono(real_format):
    meta = read_metadata(real_format)
    normal = meta[~meta.is_null].iloc[0]; null = meta[meta.is_null].iloc[0]
    info_n = sf.info(real_format / "media" / normal.folder / "audio.wav")
    info_0 = sf.info(real_format / "media" / null.folder / "audio.wav")
    assert (info_n.samplerate, info_n.channels) == (48000, 2)
    assert (info_0.samplerate, info_0.channels) == (44100, 1)
    for folder in (normal.folder, null.folder):
        a = load_audio(real_format / "media" / folder / "audio.wav")
        assert a.shape == (160_000,) and a.dtype == np.float32 and np.abs(a).max() > 0.01


def test_resampling_keeps_pitch_and_length(tmp_path):
    t = np.arange(441_000) / 44_100
    sf.write(tmp_path / "a.wav", np.stack([np.sin(2 * np.pi * 1000 * t)] * 2, 1) * 0.3, 44_100, subtype="PCM_16")
    a = load_audio(tmp_path / "a.wav", sample_rate=16000)
    assert a.shape == (160_000,)
    assert abs(np.abs(np.fft.rfft(a)).argmax() * 16000 / len(a) - 1000) < 1


def test_null_folder_rule(real_format):
    ds = RefAVSDataset(real_format, "test_n")
    for s in ds.samples:
        assert s.is_null and s.fid == 0 and s.category == "null"
        assert s.folder.startswith(("null_c-", "null_m-")) and s.folder != s.vid
        assert (real_format / "media" / s.vid).is_dir()  # the source clip exists ...
    item = ds[0]
    assert item["folder"] != item["vid"] and item["masks"].sum() == 0  # ... but the row reads its own, empty, folder
    src = read_samples(real_format, "train")[0]
    assert src.mask_paths(real_format)[0].parts[-3] == src.folder


def test_duplicate_uid_rows_kept(real_format, tmp_path):
    root = tmp_path / "dup"; shutil.copytree(real_format, root)
    df = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    row = df[df.split == "test_s"].iloc[[0]].assign(exp="Another expression of the same object.")
    df = pd.concat([df, row], ignore_index=True); df.to_csv(root / "metadata.csv", index=False)
    ds = RefAVSDataset(root, "test_s")
    uids = [s.uid for s in ds.samples]
    assert len(uids) - len(set(uids)) >= 1 and len(ds) == int((df.split == "test_s").sum())
    assert len({s.row for s in ds.samples}) == len(ds)  # rows stay distinct keys
    assert ds[len(ds) - 1]["expression"] == "Another expression of the same object."


def test_todo_rows_excluded(real_format):
    meta = read_metadata(real_format)
    assert (meta.split == "TODO").sum() > 0
    assert sum(len(RefAVSDataset(real_format, s)) for s in SPLITS) == int((meta.split != "TODO").sum())
    with pytest.raises(RefAVSDataError, match="unknown split"): RefAVSDataset(real_format, "TODO")


def test_dataloader_workers_and_pickle(real_format):
    ds = RefAVSDataset(real_format, "train")
    for workers in (0, 2):
        batches = list(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_clips))
        assert sum(len(b) for b in batches) == len(ds)
        assert [it["row"] for b in batches for it in b] == [s.row for s in ds.samples]


def test_log_mel_matches_whisper(real_format):
    from transformers import WhisperFeatureExtractor
    a = RefAVSDataset(real_format, "train")[0]["audio"]
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400)
    ref = fe(a, sampling_rate=16000, return_tensors="np", padding="longest")["input_features"][0]
    ours = whisper_log_mel(a)
    assert ours.shape == ref.shape == (128, 1000)
    assert np.abs(ours - ref).max() < 1e-4


def test_load_video_clip(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.zeros((24, 32, 48, 3), np.uint8)  # 12 s at 2 fps; frame i is lit in proportion to its second
    for i in range(24): frames[i] = 10 * (i // 2)
    audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(12 * 16000) / 16000)).astype(np.float32)
    path = write_video_clip(tmp_path / "v.mp4", frames, audio, fps=2, sample_rate=16000)
    clip = load_video_clip(path, num_frames=10)
    assert clip["frames"].shape == (10, 32, 48, 3) and clip["audio"].shape == (160_000,)
    assert [round(t) for t in clip["timestamps"]] == list(range(10))
    assert np.allclose(clip["frames"][:, 16, 24, 0].astype(int), 10 * np.arange(10), atol=4)  # the frame of each second
    late = load_video_clip(path, num_frames=10, start=2.0)
    assert [round(t) for t in late["timestamps"]] == list(range(2, 12)) and late["audio"].shape == (160_000,)
    short = write_video_clip(tmp_path / "s.mp4", frames[:8], None, fps=2)  # 4 s, silent: sampled uniformly
    sc = load_video_clip(short, num_frames=10)
    assert sc["frames"].shape[0] == 10 and sc["timestamps"] == sorted(sc["timestamps"]) and sc["timestamps"][-1] > 3
    with pytest.raises(RefAVSDataError, match="nope.mp4"): load_video_clip(tmp_path / "nope.mp4")


# ---- the validator: one test per problem kind, each checks that the file is named --------------------------------

def _check(root, kind, name):
    rep = validate_refavs(root, progress=False)
    hits = [p for p in rep.problems if p.kind == kind]
    assert hits, f"no {kind} in {rep}"
    assert any(name in p.path and name in str(p) for p in hits), hits
    assert not rep.ok and str(rep).splitlines()[-1].startswith(str(root))
    return rep


def _normal(root, split="train"):
    return next(s for s in read_samples(root, split) if not s.is_null)


def test_clean_benchmark_has_no_problems(small):
    rep = validate_refavs(small, progress=False)
    assert rep.ok and rep.rows == len(read_metadata(small)) and "0 problem(s)" in rep.summary()


def test_missing_csv(tmp_path):
    rep = validate_refavs(tmp_path, progress=False)
    assert [p.kind for p in rep.problems] == ["missing-csv"] and "metadata.csv" in str(rep)


def test_missing_columns(broken):
    df = pd.read_csv(broken / "metadata.csv", dtype=str).drop(columns=["fid"]); df.to_csv(broken / "metadata.csv", index=False)
    rep = _check(broken, "missing-columns", "metadata.csv")
    assert "fid" in str(rep)


def test_unknown_split(broken):
    df = pd.read_csv(broken / "metadata.csv", dtype=str, keep_default_na=False); df.loc[2, "split"] = "tset_s"
    df.to_csv(broken / "metadata.csv", index=False)
    rep = _check(broken, "unknown-split", "metadata.csv")
    assert "tset_s" in str(rep) and rep.problems[0].row == 2


def test_malformed_uid(broken):
    df = pd.read_csv(broken / "metadata.csv", dtype=str, keep_default_na=False); df.loc[1, "uid"] = "just_a_uid"
    df.to_csv(broken / "metadata.csv", index=False)
    rep = _check(broken, "malformed-uid", "metadata.csv")
    assert "just_a_uid" in str(rep)


def test_missing_frame(broken):
    s = _normal(broken); p = s.frame_paths(broken)[4]; p.unlink()
    _check(broken, "missing-frame", str(p))
    with pytest.raises(RefAVSDataError, match="4.jpg"): RefAVSDataset(broken, "train")[read_samples(broken, "train").index(s)]


def test_extra_frame(broken):
    s = _normal(broken); extra = s.frame_paths(broken)[0].with_name("10.jpg")
    shutil.copy(s.frame_paths(broken)[0], extra)
    _check(broken, "extra-frame", str(extra))


def test_unreadable_frame(broken):
    s = _normal(broken); p = s.frame_paths(broken)[2]; p.write_bytes(b"not a jpeg")
    _check(broken, "unreadable-frame", str(p))
    with pytest.raises(RefAVSDataError, match="2.jpg"): RefAVSDataset(broken, "train")[read_samples(broken, "train").index(s)]


def test_frame_size(broken):
    s = _normal(broken); p = s.frame_paths(broken)[7]; Image.new("RGB", (20, 16)).save(p)
    _check(broken, "frame-size", str(p))
    with pytest.raises(RefAVSDataError, match="7.jpg"): RefAVSDataset(broken, "train")[read_samples(broken, "train").index(s)]


def test_missing_audio(broken):
    s = _normal(broken); s.audio_path(broken).unlink()
    _check(broken, "missing-audio", str(s.audio_path(broken)))
    with pytest.raises(RefAVSDataError, match="audio.wav"): RefAVSDataset(broken, "train")[read_samples(broken, "train").index(s)]


def test_unreadable_audio(broken):
    s = _normal(broken); s.audio_path(broken).write_bytes(b"RIFF....garbage")
    _check(broken, "unreadable-audio", str(s.audio_path(broken)))
    with pytest.raises(RefAVSDataError, match="audio.wav"): RefAVSDataset(broken, "train")[read_samples(broken, "train").index(s)]


def test_short_audio(broken):
    s = _normal(broken); a, sr = sf.read(s.audio_path(broken)); sf.write(s.audio_path(broken), a[: 3 * sr], sr)
    rep = _check(broken, "short-audio", str(s.audio_path(broken)))
    assert "3.00 s" in str(rep)


def test_missing_mask(broken):
    s = _normal(broken, "val"); p = s.mask_paths(broken)[9]; p.unlink()
    _check(broken, "missing-mask", str(p))
    with pytest.raises(RefAVSDataError, match="00009.png"): RefAVSDataset(broken, "val")[read_samples(broken, "val").index(s)]


def test_unreadable_mask(broken):
    s = _normal(broken, "val"); p = s.mask_paths(broken)[1]; p.write_bytes(b"\x89PNG broken")
    _check(broken, "unreadable-mask", str(p))


def test_mask_size(broken):
    s = _normal(broken, "test_s"); p = s.mask_paths(broken)[3]; Image.fromarray(np.zeros((8, 8), np.uint8)).save(p)
    rep = _check(broken, "mask-size", str(p))
    assert "8x8" in str(rep) and "32x32" in str(rep)
    with pytest.raises(RefAVSDataError, match="00003.png"): RefAVSDataset(broken, "test_s")[read_samples(broken, "test_s").index(s)]


def test_mask_values(broken):
    s = _normal(broken, "test_s"); p = s.mask_paths(broken)[6]
    Image.fromarray(np.full((32, 32), 77, np.uint8)).save(p)
    rep = _check(broken, "mask-values", str(p))
    assert "77" in str(rep)


def test_null_mask_not_empty(broken):
    s = read_samples(broken, "test_n")[0]; p = s.mask_paths(broken)[0]
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(p)
    _check(broken, "null-mask-not-empty", str(p))


def test_reports_all_problems_at_once(broken):
    a, b = _normal(broken, "train"), _normal(broken, "test_s")
    a.frame_paths(broken)[0].unlink(); a.frame_paths(broken)[1].unlink(); b.audio_path(broken).unlink()
    rep = validate_refavs(broken, progress=False)
    assert rep.counts() == {"missing-frame": 2, "missing-audio": 1}
    assert "3 problem(s)" in rep.summary()


def test_check_data_cli_exit_codes(small, broken, capsys):
    check = lambda *a: aurora_nb_main(["check-data", *a])  # the console script's entry point; its parser lives in aurora_nb.cli
    assert check(str(small), "--no-progress") == 0
    assert "OK" in capsys.readouterr().out
    _normal(broken).audio_path(broken).unlink()
    assert check(str(broken), "--no-progress") == 1
    out = capsys.readouterr().out
    assert "audio.wav" in out and "FAILED" in out
    with pytest.raises(SystemExit) as e: check()
    assert e.value.code == 2


def test_real_rows_read_as_the_official_loader_reads_them():
    meta = read_metadata(REAL_ROWS)
    assert len(meta) == 10 and meta.split.value_counts().to_dict() == {"test_s": 3, "train": 3, "TODO": 2, "val": 1, "test_n": 1}
    assert meta.exp[5] == "The object making loudest sound "  # kept verbatim (trailing space)
    assert meta.uid[3] == meta.uid[8] and meta.fid[3] != meta.fid[8]  # a uid repeated in test_s, another object
    ts = read_samples(REAL_ROWS, "test_s")
    assert [s.row for s in ts] == [3, 8, 9] and [s.index for s in ts] == [0, 1, 2]  # both duplicates are rows
    null = read_samples(REAL_ROWS, "test_n")[0]
    assert null.folder == "null_c--cLOg0sQ0Zo_420000_430000" and null.category == "null" and null.vid != null.folder


def test_real_rows_warn_about_todo_rows_and_the_error_message():
    w = row_warnings(read_metadata(REAL_ROWS))
    assert [(r, k) for r, k, _ in w] == [(2, "not-a-sentence"), (4, "outside-splits"), (5, "outside-splits")]
    assert "[Error]" in w[0][2] and "expected a plain sentence" in w[0][2] and "expected one of train" in w[1][2]
    with pytest.warns(RefAVSDataWarning, match=r"metadata.csv: row 2: expression '\[Error\]"):
        train = read_samples(REAL_ROWS, "train")
    assert len(train) == 3  # a warning, not a filter: the row is still read
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the curly apostrophe, the stray `_` and the trailing space are sentences
        read_samples(REAL_ROWS, "test_s"); read_samples(REAL_ROWS, "val")
    rep = validate_refavs(REAL_ROWS, progress=False)
    assert rep.warning_counts() == {"not-a-sentence": 1, "outside-splits": 2}
    assert [w.row for w in rep.warnings] == [2, 4, 5] and all(w.path.endswith("metadata.csv") for w in rep.warnings)
    assert rep.warning_summary().startswith("3 warning(s)") and "unknown-split" not in rep.counts()  # TODO is not an unknown split
    assert "warning" not in rep.summary()  # the problems' summary line is unchanged (the pipeline prints it)


def test_check_data_prints_warnings_without_failing(small, capsys):
    assert aurora_nb_main(["check-data", str(REAL_ROWS), "--no-progress"]) == 1  # no media: problems
    out = capsys.readouterr().out
    assert "warning [not-a-sentence]" in out and "(row 2)" in out and "warning [outside-splits]" in out
    assert aurora_nb_main(["check-data", str(small), "--no-progress"]) == 0
    out = capsys.readouterr().out
    n_todo = int((read_metadata(small).split == "TODO").sum())
    assert out.count("warning [outside-splits]") == n_todo and "OK" in out and (f"{n_todo} warning(s)" in out) == (n_todo > 0)
