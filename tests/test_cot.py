"""CoT: the class normaliser, every parse_answer edge case (golden), a property test that the parser never raises and
reads back any class it is given, the oracle writer's facts, the JSONL format (resume, provenance) and the release
loader's refusal of a misaligned file."""
import json
import re

import pytest
from hypothesis import given, settings, strategies as st

from aurora_nb.cot import (NULL_SYNONYMS, STEPS, CotAlignmentError, CotRecord, cot_answer, cot_done, format_cot, load_release_cot,
                           normalise_class, oracle_cot, oracle_records, parse_answer, read_cot_jsonl, teacher_answer,
                           write_cot_jsonl)
from aurora_nb.data import read_samples
from aurora_nb.synth import read_annotations

ROOT_SYNTH = "data/synth"


@pytest.fixture(scope="module")
def synth(repo_root):
    return repo_root / ROOT_SYNTH


@pytest.fixture(scope="module")
def ann(synth):
    return read_annotations(synth)


# ---------------------------------------------------------------- normaliser
@pytest.mark.parametrize("written, canonical", [
    ("hair-dryer", "hair-dryer"), ("Hair dryer", "hair-dryer"), ('"the hair-dryer"', "hair-dryer"), ("'man'", "man"),
    ("  Vacuum   Cleaner. ", "vacuum-cleaner"), ("an Emergency_Car", "emergency-car"), ("the 'man'", "man"),
    ("\u201cguitar\u201d", "guitar"), ("Nothing", "null"), ("none", "null"), ("no object", "null"), ("", None),
    ("the", None), ("  '' ", None), (None, None), (3, None)])
def test_normalise_class(written, canonical):
    assert normalise_class(written) == canonical


# ---------------------------------------------------------------- parser: golden edge cases
FULL = format_cot("Two objects.", "A drum sound.", "Only the drum fits.", "drum")
EDGE = [
    (cot_answer(FULL), "drum", 1, STEPS, False, True),
    ("The target is hair-dryer. It is [SEG].", "hair-dryer", 1, (), False, True),
    ("The target is vacuum cleaner. It is [SEG].<|im_end|>", "vacuum-cleaner", 1, (), False, True),
    ("The target is 'man'. It is [SEG].", "man", 1, (), False, True),
    ('The target is "man". It is [SEG].', "man", 1, (), False, True),
    ('The target is "the Guitar." It is [SEG].<|im_end|><|endoftext|><|endoftext|>', "guitar", 1, (), False, True),
    ("The target is the drum, which starts first. It is [SEG].", "drum", 1, (), False, True),
    ("The target is drum. Wait, let me reconsider. The target is horn. It is [SEG].", "horn", 1, (), False, True),
    ("The target is null. It is [SEG].", "null", 1, (), False, True),
    ("The target is nothing. It is [SEG].", "null", 1, (), False, True),
    ("THE TARGET IS HAIR DRYER! It is [SEG].", "hair-dryer", 1, (), False, True),
    ("It is hair-dryer [SEG].", "hair-dryer", 1, (), False, False),
    ("It is vacuum cleaner [SEG].<|im_end|>", "vacuum-cleaner", 1, (), False, False),
    ("It is [SEG].", None, 1, (), False, True),
    ("It is [SEG]. It is [SEG].", None, 2, (), False, True),
    ("Images: two objects. Audio: a bell. The target is bel", None, 0, ("images", "audio"), True, False),
    ("The target is drum. It is", "drum", 0, (), True, False),
    ("The target is drum It is [SEG]", "drum", 1, (), False, False),
    ("The target is drum.It is [SEG].", "drum", 1, (), False, True),
    ("The target lasts 2.5 s. The target is drum. It is [SEG].", "drum", 1, (), False, True),
    ("I think it's the drum.", None, 0, (), True, False),
    ("", None, 0, (), True, False),
    ("Step 1: a. Step 2: b. Step 3: c. Step 4: The target is drum. It is [SEG].", "drum", 1, STEPS, False, True),
    ("Analyze image: a. Analyze Audio: b. Analyze Reference: c. Get Answer: The target is 'man'. It is [SEG].", "man", 1, STEPS, False, True),
]


@pytest.mark.parametrize("text, target, n_seg, steps, truncated, format_ok", EDGE)
def test_parse_answer_edge_cases(text, target, n_seg, steps, truncated, format_ok):
    p = parse_answer(text)
    assert (p.target, p.n_seg, p.has_seg, p.steps, p.truncated, p.format_ok) == (target, n_seg, n_seg > 0, steps, truncated, format_ok)


def test_well_formed_needs_steps_class_and_contract():
    assert parse_answer(cot_answer(FULL)).well_formed
    assert not parse_answer("The target is drum. It is [SEG].").well_formed  # no steps
    assert not parse_answer(FULL).well_formed  # no closing [SEG]


def test_teacher_form_is_only_a_fallback():
    assert parse_answer(teacher_answer("drum")).target_form == "teacher"
    assert parse_answer("The target is horn. It is drum [SEG].").target == "horn"  # "The target is" wins


@pytest.mark.parametrize("junk", [None, 12, b"It is drum [SEG].", ["x"], "\x00\ud800", "<|im_end|>" * 5])
def test_parse_answer_accepts_anything(junk):
    parse_answer(junk)


# ---------------------------------------------------------------- parser: properties
WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8).filter(lambda w: w not in ("the", "a", "an", "it", "is"))
CLASS = st.lists(WORD, min_size=1, max_size=3).flatmap(lambda ws: st.tuples(st.just(ws), st.lists(st.sampled_from(["-", " ", "_"]), min_size=len(ws) - 1, max_size=len(ws) - 1)))
QUOTE = st.sampled_from(["", "'", '"', "\u201c"])
ARTICLE = st.sampled_from(["", "the ", "a ", "The "])
TAIL = st.lists(st.sampled_from(["<|im_end|>", "<|endoftext|>", "\n", " "]), max_size=4).map("".join)


def _spell(words, joins):
    return words[0] + "".join(j + w for j, w in zip(joins, words[1:]))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parse_answer_never_raises(text):
    p = parse_answer(text)
    assert p.n_seg == text.count("[SEG]") - sum(m.group().count("[SEG]") for m in re.finditer(r"<\|[^<>|]{1,40}\|>", text))
    assert p.target is None or p.target == normalise_class(p.target)


@settings(max_examples=300, deadline=None)
@given(CLASS, QUOTE, ARTICLE, st.sampled_from(["", "Word. ", "Images: x. Audio: y. "]), st.booleans(), TAIL)
def test_any_class_is_read_back(cls, quote, article, prefix, case, tail):
    words, joins = cls
    name = _spell(words, joins)
    shown = name.upper() if case else name
    close = "\u201d" if quote == "\u201c" else quote
    text = f"{prefix}The target is {article}{quote}{shown}{close}. It is [SEG].{tail}"
    expected = "null" if "-".join(words) in NULL_SYNONYMS else "-".join(words)  # "nothing", "none": a null answer
    p = parse_answer(text)
    assert p.target == expected
    assert p.target == normalise_class(name) and p.format_ok and not p.truncated
    assert parse_answer(f"It is {shown} [SEG].{tail}").target == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000))
def test_every_prefix_parses_and_unfinished_ones_are_truncated(cut):
    full = cot_answer(format_cot("Two objects.", "A hiss from 2 s to 5 s.", "Only the hair dryer fits.", "hair-dryer"))
    text = full[:cut % (len(full) + 1)]
    p = parse_answer(text)
    assert p.truncated == (not text.rstrip().endswith("[SEG].") and not text.rstrip().endswith("[SEG]"))
    if text == full: assert p.target == "hair-dryer" and p.well_formed


# ---------------------------------------------------------------- oracle writer
def test_oracle_cot_names_every_row_class_and_has_four_steps(ann):
    for r in ann["rows"]:
        p = parse_answer(cot_answer(oracle_cot(ann, r["row"])))
        assert p.target == normalise_class(r["category"]) and p.well_formed, r["row"]


def test_oracle_images_step_names_exactly_the_visible_classes(ann):
    for r in ann["rows"]:
        images = oracle_cot(ann, r["row"]).split("Audio:")[0]
        named = {c for c in ann["categories"] if re.search(rf"\b{re.escape(c)}\b", images)}
        assert named == {o["category"] for o in ann["clips"][r["folder"]]["objects"]}, r["row"]


def test_oracle_audio_step_states_the_true_seconds(ann):
    for r in ann["rows"]:
        clip = ann["clips"][r["folder"]]
        audio = oracle_cot(ann, r["row"]).split("Audio:")[1].split("Reference:")[0]
        heard = clip["audio_sources"] if clip["is_null"] else clip["objects"]
        for s in heard:
            for a, b in s["sounding"]:
                if [[a, b]] != [[0, 10]]: assert f"from {a} s to {b} s" in audio, (r["row"], s)
        if not any(s["sounding"] for s in heard): assert "silent" in audio  # muted null folder: the hidden source is not told


def test_oracle_is_seeded(ann):
    rows = [r["row"] for r in ann["rows"]]
    assert all(oracle_cot(ann, i, 3) == oracle_cot(ann, i, 3) for i in rows)
    assert sum(oracle_cot(ann, i, 0) != oracle_cot(ann, i, 1) for i in rows) > len(rows) // 2


def test_oracle_never_tells_indices_or_ids(ann):
    for r in ann["rows"]:
        t = oracle_cot(ann, r["row"])
        assert "fid" not in t and r["uid"] not in t and r["split"] not in t.split() and not re.search(r"\d+\s*px", t)


# ---------------------------------------------------------------- JSONL
def test_jsonl_round_trip_resume_and_repair(tmp_path, synth):
    f = tmp_path / "cot.jsonl"
    recs = list(oracle_records(synth, "train"))
    assert write_cot_jsonl(f, recs[:5]) == 5
    with f.open("a") as h: h.write('{"split": "train", "index": 5, "te')  # killed mid-line
    assert len(read_cot_jsonl(f)) == 5
    assert cot_done(f) == {("train", i) for i in range(5)}
    assert write_cot_jsonl(f, recs) == len(recs) - 5
    assert read_cot_jsonl(f) == recs
    assert write_cot_jsonl(f, recs) == 0
    assert list(oracle_records(synth, "train", skip=cot_done(f))) == []


def test_jsonl_refuses_mixed_provenance_and_bad_lines(tmp_path, synth):
    f = tmp_path / "cot.jsonl"
    write_cot_jsonl(f, list(oracle_records(synth, "val")))
    other = CotRecord("train", 0, "u_x_1", "x", "t", "teacher", "Qwen/Qwen2.5-Omni-7B", "teacher-v1")
    with pytest.raises(ValueError, match="own file"): write_cot_jsonl(f, [other])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"split": "train", "index": 0}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field"): read_cot_jsonl(bad)
    bad.write_text('not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not JSON"): read_cot_jsonl(bad)


# ---------------------------------------------------------------- release loader
@pytest.fixture
def release(tmp_path, synth):
    entries = [{"reasoning": r.text} for r in oracle_records(synth, "train")]
    return tmp_path, entries


def _write(path, entries):
    path.write_text(json.dumps(entries)); return path


def test_release_loader_accepts_an_aligned_file_and_drops_long_paths(release, synth):
    tmp, e = release
    e[2] = {"reasoning": "Padding. " * 250 + e[2]["reasoning"]}  # 2,000+ characters
    rel = load_release_cot(_write(tmp / "r.json", e), synth)
    train = read_samples(synth, "train")
    assert (rel.rows, rel.checked, rel.mismatched, rel.dropped_long) == (len(train), len(train), 0, 1)
    assert [r.index for r in rel.records] == [s.index for s in train if s.index != 2]
    assert all(r.source == "release" and r.uid == train[r.index].uid for r in rel.records)


@pytest.mark.parametrize("shift", [1, -1, 3])
def test_release_loader_rejects_a_shifted_file(release, synth, shift):
    tmp, e = release
    shifted = e[shift:] + e[:shift]
    train = read_samples(synth, "train")
    first = next(i for i in range(len(train)) if train[(i + shift) % len(train)].category != train[i].category)
    with pytest.raises(CotAlignmentError, match=rf"entry {first} names"):
        load_release_cot(_write(tmp / "s.json", shifted), synth)


def test_release_loader_rejects_wrong_length_and_uncheckable_files(release, synth):
    tmp, e = release
    with pytest.raises(CotAlignmentError, match="aligned by position"): load_release_cot(_write(tmp / "a.json", e[1:]), synth)
    with pytest.raises(CotAlignmentError, match="aligned by position"): load_release_cot(_write(tmp / "b.json", e + e[:1]), synth)
    with pytest.raises(CotAlignmentError, match="cannot be checked"):
        load_release_cot(_write(tmp / "c.json", [{"reasoning": "no class here"}] * len(e)), synth)
    with pytest.raises(CotAlignmentError, match="reasoning"): load_release_cot(_write(tmp / "d.json", [{"text": "x"}] * len(e)), synth)


def test_release_loader_tolerance(release, synth):
    tmp, e = release
    e[0] = {"reasoning": "The target is gong."}  # one wrong class among 35
    with pytest.raises(CotAlignmentError, match="entry 0 names 'gong'"): load_release_cot(_write(tmp / "r.json", e), synth)
    assert load_release_cot(tmp / "r.json", synth, max_mismatch=0.05).mismatched == 1


# ---------------------------------------------------------------- the model reads no text of its own
def test_model_imports_neither_synth_nor_cot():
    import subprocess, sys
    code = ("import sys, aurora_nb.model as m; bad = [k for k in ('aurora_nb.synth', 'aurora_nb.cot') if k in sys.modules]; "
            "assert not bad, bad; assert not hasattr(m, 'SYSTEM_PROMPT') and not hasattr(m, 'build_messages')")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_collator_needs_the_callers_messages():
    from aurora_nb.model import AuroraCollator
    with pytest.raises(TypeError, match="build_messages"): AuroraCollator(None, None)


def test_prompt_is_the_released_text():
    from aurora_nb.cot import SYSTEM_PROMPT, build_messages
    m = build_messages(" A gong.  ")
    assert m[0] == {"role": "system", "content": SYSTEM_PROMPT} and SYSTEM_PROMPT.startswith("<<SYS>>\nYou are a helpful")
    assert m[1]["content"][2]["text"] == "\nThe reference is:  A gong.   Please segment the corresponding object in the images."
