"""The synthetic Ref-AVS generator (aurora_nb.synth): layout, design goals, determinism, annotations and the CLI."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from aurora_nb.data import SPLITS, RefAVSDataset, read_metadata, validate_refavs
from aurora_nb.cli import main as aurora_nb_main
from aurora_nb.synth import (CATEGORIES, CUE_TYPES, SEEN_CATEGORIES, UNSEEN_CATEGORIES, clip_predicates, expressions_for,
                             make_synthetic_refavs, read_annotations, synthetic_corpus)

KW = dict(n_videos=6, size=32, sample_rate=8000)


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file(): h.update(str(p.relative_to(root)).encode()); h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "b"
    make_synthetic_refavs(root, seed=0, **KW)
    return root


def test_layout_and_codecs(bench):
    meta = read_metadata(bench)
    assert (bench / "metadata.csv").read_text().splitlines()[0] == "vid,uid,split,fid,exp"
    assert set(meta.split) == {*SPLITS, "TODO"}
    for folder in meta.folder.unique():
        fr = bench / "media" / folder / "frames"
        assert sorted(p.name for p in fr.iterdir()) == sorted(f"{i}.jpg" for i in range(10))
        with Image.open(fr / "0.jpg") as im: assert im.format == "JPEG" and im.size == (32, 32)
        info = sf.info(bench / "media" / folder / "audio.wav")
        assert info.format == "WAV" and info.subtype == "PCM_16" and abs(info.duration - 10) < 1e-6
    for folder, fid in set(zip(meta.folder, meta.fid)):
        m = Image.open(bench / "gt_mask" / folder / f"fid_{fid}" / "00000.png")
        assert m.mode == "L" and set(np.unique(np.asarray(m))) <= {0, 255}
    assert validate_refavs(bench, progress=False).ok


def test_splits_categories_and_nulls(bench):
    meta = read_metadata(bench)
    train_cats = set(meta.category[meta.split == "train"]) - {"null"}
    assert train_cats <= set(SEEN_CATEGORIES)
    for sp in ("val", "test_s"): assert set(meta.category[meta.split == sp]) - {"null"} <= set(SEEN_CATEGORIES)
    assert set(meta.category[meta.split == "test_u"]) & set(UNSEEN_CATEGORIES)
    n = meta[meta.split == "test_n"]
    assert len(n) and n.is_null.all() and (n.fid == 0).all() and (n.category == "null").all()
    assert all(u.startswith(("null_c-", "null_m-")) and u.rsplit("_", 2)[1] == "null" for u in n.uid)
    assert all(f"null_c-{v}" == f or f"null_m-{v}" == f for v, f in zip(n.vid, n.folder))
    assert set(n.vid) <= set(meta.vid[meta.split == "test_s"])  # test_n is made from test_s clips
    assert meta[meta.split == "train"].is_null.any() and meta[meta.split == "val"].is_null.any()
    vids = {sp: set(meta.vid[(meta.split == sp) & ~meta.is_null]) for sp in ("train", "val", "test_s", "test_u")}
    assert all(not (vids[a] & vids[b]) for a in vids for b in vids if a < b)  # no clip in two splits
    assert meta.uid.duplicated().any()  # a duplicated uid, as in the real CSV


def test_annotations_consistent(bench):
    ann, meta = read_annotations(bench), read_metadata(bench)
    assert [r["uid"] for r in ann["rows"]] == meta.uid.tolist() and [r["row"] for r in ann["rows"]] == meta.row.tolist()
    for r in ann["rows"]:
        assert r["cue"] in CUE_TYPES
        clip = ann["clips"][r["folder"]]
        if r["cue"] == "null":
            assert r["target"] is None and clip["is_null"] and all(not o["sounding"] for o in clip["objects"])
            continue
        objs = clip["objects"]
        assert objs[r["target"]]["category"] == r["category"] and r["fid"] == r["target"]
        # the expression refers to exactly its target under its recorded cue type
        assert r["expression"] in expressions_for(clip_predicates(objs, clip["size"][0]), r["target"])[r["cue"]]
        loud = [dict(o, sounding=[[0, 10]]) for o in objs]  # every object always sounding: what the frames alone tell
        assert r["audio_required"] == (r["expression"] not in expressions_for(clip_predicates(loud, clip["size"][0]), r["target"])[r["cue"]])
        if r["cue"] in ("visual", "spatial"): assert not r["audio_required"]
        m = np.stack([np.asarray(Image.open(bench / "gt_mask" / r["folder"] / f"fid_{r['fid']}" / f"{t:05d}.png")) for t in range(10)])
        for t, box in enumerate(objs[r["target"]]["boxes"]):  # boxes are the masks' bounding boxes
            ys, xs = np.nonzero(m[t])
            assert box == ([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None)
        for s, e in objs[r["target"]]["sounding"]: assert 0 <= s < e <= 10


def test_audio_wording_has_no_category_hint(bench):
    for r in read_annotations(bench)["rows"]:
        if r["cue"] in ("audio", "temporal", "mixed", "null"):
            assert not any(c in r["expression"].lower() for c in CATEGORIES), r["expression"]


def test_sounding_seconds_are_audible(tmp_path):
    make_synthetic_refavs(tmp_path / "s", n_videos=4, seed=1, size=32, sample_rate=16000, todo_videos=0)
    ann = read_annotations(tmp_path / "s")
    for folder, clip in ann["clips"].items():
        a, sr = sf.read(tmp_path / "s" / "media" / folder / "audio.wav")
        rms = np.sqrt((a[: 10 * sr].reshape(10, sr) ** 2).mean(1))  # per second
        on = np.zeros(10, bool)
        for o in clip["objects"]:
            for s, e in o["sounding"]: on[s:e] = True
        for src in clip.get("audio_sources", []):
            for s, e in src["sounding"]: on[s:e] = True
        assert (rms[on] > 0.02).all() and (rms[~on] < 0.01).all(), (folder, rms.round(3), on)


def test_deterministic(bench, tmp_path):
    make_synthetic_refavs(tmp_path / "same", seed=0, **KW)
    make_synthetic_refavs(tmp_path / "other", seed=1, **KW)
    assert digest(tmp_path / "same") == digest(bench)
    assert digest(tmp_path / "other") != digest(bench)


def test_sizes_and_objects_configurable(tmp_path):
    make_synthetic_refavs(tmp_path / "z", n_videos=4, seed=2, size=48, objects=(3, 3), sample_rate=8000, todo_videos=0)
    ann = read_annotations(tmp_path / "z")
    assert all(len(c["objects"]) == 3 and c["size"] == [48, 48] for c in ann["clips"].values())
    assert RefAVSDataset(tmp_path / "z", "train")[0]["frames"].shape == (10, 48, 48, 3)
    with pytest.raises(FileExistsError, match="not empty"): make_synthetic_refavs(tmp_path / "z", n_videos=4)
    make_synthetic_refavs(tmp_path / "z", n_videos=4, seed=2, size=32, sample_rate=8000, overwrite=True)
    assert read_annotations(tmp_path / "z")["generator"]["size"] == 32


def test_corpus_and_vocabulary(bench):
    lines = list(synthetic_corpus(bench))
    assert set(CATEGORIES) <= set(lines) and set(read_metadata(bench).exp) <= set(lines)
    assert set(SEEN_CATEGORIES) | set(UNSEEN_CATEGORIES) == set(CATEGORIES)
    assert list(synthetic_corpus())  # vocabulary only


def test_synth_cli_exit_codes(tmp_path, capsys):
    synth = lambda *a: aurora_nb_main(["synth", *a])  # the console script's entry point; its parser lives in aurora_nb.cli
    assert synth("--out", str(tmp_path / "c"), "--videos", "4", "--size", "32", "--sample-rate", "8000", "--no-progress") == 0
    assert "wrote" in capsys.readouterr().out and validate_refavs(tmp_path / "c", progress=False).ok
    assert synth("--out", str(tmp_path / "c"), "--videos", "4", "--no-progress") == 2  # not empty
    assert "not empty" in capsys.readouterr().err
    assert synth("--out", str(tmp_path / "d"), "--videos", "2", "--no-progress") == 2  # too few videos
    assert synth("--out", str(tmp_path / "e"), "--min-objects", "3", "--max-objects", "2") == 2
    with pytest.raises(SystemExit) as e: synth()
    assert e.value.code == 2


def test_committed_sample(repo_root):
    root = repo_root / "data" / "synth"
    assert validate_refavs(root, progress=False).ok
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 5_000_000
    assert len(read_annotations(root)["rows"]) == len(read_metadata(root))
