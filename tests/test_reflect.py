"""Stage 2: the judge on hand-made answers, oracle corrections, the model corrector's filter, prompt and cache (a
Hugging Face checkpoint folder through `make_corrector`, forced replies), splicing, the device rule for every model
stage 2 loads, the resumable search for wrong paths, stage 2's own length limit and a stage-2 run through the
command-line handler that resumes after a kill."""
import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from transformers import LogitsProcessor, LogitsProcessorList

import aurora_nb.model
import aurora_nb.sft
from aurora_nb.config import get_config
from aurora_nb.cot import SEG_SENTENCE, SEG_TOKEN, STEP_HEADERS, STEPS, cot_answer, format_cot, oracle_cot, parse_answer, teacher_reasoning
from aurora_nb.data import RefAVSDataset
from aurora_nb.model import build_model, save_pretrained
from aurora_nb.reflect import (CORRECTIONS_FILE, JUDGED_FILE, REFLECT_FILE, TEACHER_CORRECTION_VERSION, TRIGGER, Case, ModelCorrector,
                               OracleCorrector, ReflectRecord, build_reflective_data, correct_rows, correction_instruction, find_wrong_paths,
                               first_answers, judge, last_path, make_corrector, reasoning_of, reflective_data_file, splice_reflective,
                               split_steps, stage1_paths, train_main, train_reflect, write_reflect_jsonl)
from aurora_nb.sft import AuroraSFTTrainer
from aurora_nb.synth import make_synthetic_refavs, read_annotations

ROOT = Path(__file__).resolve().parents[1] / "data" / "synth"
ANN = read_annotations(ROOT)
ROWS = [r for r in ANN["rows"] if r["split"] == "train"]


def _other(row):
    present = {o["category"] for o in ANN["clips"][row["folder"]]["objects"]}
    return next(c for c in ANN["categories"] if c not in present)


def test_judge_hand_made():
    r = ROWS[0]; right = oracle_cot(ANN, r["row"]) + " " + SEG_SENTENCE; o = _other(r)
    assert judge(right, r, 0.9, ANN).kinds == ()
    assert judge(right, r, 0.1, ANN).kinds == ("low_iou",)
    assert judge(reasoning_of(right), r, None, ANN).kinds == ("format", "no_seg")
    assert judge(right.replace("Images:", f"Images: The {o} is on the left."), r, None, ANN).kinds == ("false_step",)
    assert judge(right.replace("Images:", f"Images: The {o} is on the left."), r).kinds == ()  # facts need the sidecar
    wrong = judge(right.replace(f"The target is {r['category']}.", f"The target is {o}."), r, None, ANN)
    assert wrong.kinds == ("wrong_class", "false_step") and wrong.target == o and list(wrong.false_steps) == ["answer"]


@pytest.mark.parametrize("seed,style", [(0, "full"), (1, "full"), (0, "terse")])
def test_oracle_reaches_the_target_and_keeps_true_steps(seed, style):
    oc = OracleCorrector(ANN, seed=seed, style=style)
    for k, r in enumerate(ROWS):
        steps = split_steps(oracle_cot(ANN, r["row"], seed + 7))  # another wording: true steps that differ from the oracle's own
        liar = ROWS[(k + 5) % len(ROWS)]
        bad = STEPS[k % 3]
        steps[bad] = split_steps(oracle_cot(ANN, liar["row"]))[bad] if liar["folder"] != r["folder"] else f"The {_other(r)} is here."
        steps["answer"] = f"The target is {_other(r)}."
        wrong = " ".join(f"{STEP_HEADERS[s]} {steps[s]}" for s in STEPS) + " " + SEG_SENTENCE
        j = judge(wrong, r, 0.9, ANN)
        fixed = oc([Case(wrong, r, j)])[0]
        assert parse_answer(fixed).target == parse_answer(oracle_cot(ANN, r["row"])).target, (k, fixed)
        assert judge(fixed + " " + SEG_SENTENCE, r, 0.9, ANN).kinds == ()
        for s in STEPS:
            if s not in j.false_steps and s != "answer": assert split_steps(fixed)[s] == steps[s], (k, s)
            else: assert split_steps(fixed)[s] == split_steps(oracle_cot(ANN, r["row"], seed, style))[s], (k, s)  # rewritten in the run's wording


def test_terse_oracle_is_true_and_its_lies_are_found():
    for r in ANN["rows"]:
        right = oracle_cot(ANN, r["row"], style="terse") + " " + SEG_SENTENCE
        assert judge(right, r, 0.9, ANN).kinds == (), right
    r = ROWS[0]; o = _other(r); right = oracle_cot(ANN, r["row"], style="terse") + " " + SEG_SENTENCE
    assert list(judge(right.replace("Images: I see", f"Images: The {o} is on the left. I see"), r, None, ANN).false_steps) == ["images"]
    when = re.search(r"sounds (from \d+ s to \d+ s)", right)
    if when: assert "false_step" in judge(right.replace(when.group(1), "from 0 s to 1 s", 1), r, None, ANN).kinds


def test_splice():
    ans = splice_reflective("  Images: a bell.\n Answer: The target is bell.  It is [SEG]. ", "Images: a drum. Answer: The target is drum.", "drum")
    assert ans == "Images: a bell. Answer: The target is bell. Wait, let me reconsider. Images: a drum. Answer: The target is drum. It is [SEG]."
    p = parse_answer(ans)
    assert (ans.count(TRIGGER), ans.count(SEG_TOKEN), p.target, p.format_ok) == (1, 1, "drum", True)
    twice = splice_reflective(f"x {TRIGGER} y It is bell [SEG].", f"{TRIGGER} Answer: the drum It is [SEG].", "drum")
    assert twice.count("reconsider") == 1 and twice.count(SEG_TOKEN) == 1 and twice.endswith("The target is drum. It is [SEG].")


def test_splice_keeps_a_target_sentence_in_another_surface_form():
    "The corrected path's own target sentence is compared as a parsed class: 'The target is the dog.' is not repeated as 'dog'."
    for end in ("The target is the dog.", "The target is 'Dog'!", "the target is DOG", "The target is the dog. It is [SEG]."):
        ans = splice_reflective("Answer: The target is cat. It is [SEG].", f"Images: a dog barks. Answer: {end}", "dog")
        assert ans.lower().count("the target is") == 2 and parse_answer(ans).target == "dog" and ans.endswith(" It is [SEG]."), ans
    assert splice_reflective("x", "Answer: The target is cat.", "dog").endswith("The target is cat. The target is dog. It is [SEG].")
    assert splice_reflective("x", "Answer: The target is dog, which barks. Then it stops.", "dog").endswith("stops. The target is dog. It is [SEG].")


def test_correction_prompt_gives_what_the_oracle_knows():
    r = ROWS[0]; o = _other(r); right = oracle_cot(ANN, r["row"])
    wrong = right.replace("Images:", f"Images: The {o} is on the left.").replace(f"The target is {r['category']}.", f"The target is {o}.")
    j = judge(wrong + " " + SEG_SENTENCE, r, 0.9, ANN)
    text = correction_instruction(Case(f"Answer: junk. {TRIGGER} {wrong} {SEG_SENTENCE}", r, j), r["expression"])
    assert f"The reference is: {r['expression'].strip()}" in text and f"refers to is the {r['category']}." in text
    assert last_path(wrong) in text and "junk" not in text  # the last path only, without its contract
    assert f"concludes that the target is {o}, but it is {r['category']}" in text and f'"The {o} is on the left."' in text
    assert text.endswith(f"The target is {r['category']}. It is [SEG].") and all(f"{h}:" in text for h in ("Images", "Audio", "Reference"))


def test_model_corrector_resumes_after_a_kill_and_refuses_another_cache(tmp_path):
    r = ROWS[0]; good = oracle_cot(ANN, r["row"]); asked = []
    cases = [Case("x", r, judge("", r), item=lambda: pytest.fail("the clip is not needed"), key=("train", i, 0)) for i in range(4)]
    def gen(cs):
        asked.append([c.key[1] for c in cs]); return [good + " " + SEG_SENTENCE] * len(cs)
    def dies(cs):
        if asked: raise KeyboardInterrupt  # killed before the second batch comes back
        return gen(cs)
    cache = tmp_path / CORRECTIONS_FILE
    with pytest.raises(KeyboardInterrupt): ModelCorrector(dies, "m", "v", cache, batch_size=2)(cases)
    with cache.open("a") as f: f.write('{"key": ["train", 2, 0], "cat')  # and in the middle of a line
    asked.clear()
    mc = ModelCorrector(gen, "m", "v", cache, batch_size=2)
    assert mc(cases) == [good] * 4 and asked == [[2, 3]] and (mc.kept, mc.dropped) == (4, 0)
    assert [tuple(json.loads(l)["key"]) for l in cache.read_text().splitlines()] == [("train", i, 0) for i in range(4)]
    with pytest.raises(ValueError, match=r"holds corrections by 'm' \(v\), not 'm' \(v2\)"): ModelCorrector(gen, "m", "v2", cache)(cases)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(get_config("tiny", {"eval.max_new_tokens": 12, "eval.batch_size": 2}))


@pytest.fixture(scope="module")
def folders(tiny, tmp_path_factory):
    "The tiny model as an aurora_nb model folder and, its thinker alone, as a Hugging Face checkpoint folder."
    d = tmp_path_factory.mktemp("correctors")
    save_pretrained(tiny, d / "aurora")
    tiny.thinker.save_pretrained(d / "hf"); tiny.tokenizer.save_pretrained(d / "hf")
    return d / "aurora", d / "hf"


class Placed(Exception):
    "Raised by a stand-in `run_device`: the loader went through `place`."


def test_stage2_loaders_place_their_models(folders, tmp_path, monkeypatch):
    "The stage-1 model whose answers are judged and both kinds of model corrector are loaded by the device rule."
    def sentinel(device=None): raise Placed(device)
    monkeypatch.setattr(aurora_nb.model, "run_device", sentinel)
    for f in folders:  # an aurora_nb model folder and a Hugging Face checkpoint folder as the corrector
        with pytest.raises(Placed): make_corrector(get_config("tiny", {"stages.reflect.corrector": str(f)}))
    with pytest.raises(Placed):  # the stage-1 model, before any answer is judged
        reflective_data_file(get_config("tiny"), folders[0], tmp_path / "run", progress=False, limit=1)
    assert not (tmp_path / "run" / JUDGED_FILE).exists()


class Force(LogitsProcessor):
    "Row b of the batch generates exactly `ids[b]`, then the end of turn: scripted replies through the real `generate`."
    def __init__(self, ids, eos): self.ids, self.eos, self.start = ids, eos, None

    def __call__(self, input_ids, scores):
        self.start = input_ids.shape[1] if self.start is None else self.start
        k, out = input_ids.shape[1] - self.start, torch.full_like(scores, -1e9)
        for b, ids in enumerate(self.ids): out[b, ids[k] if k < len(ids) else self.eos] = 0
        return out


def test_a_hugging_face_corrector_is_filtered_cached_and_resumed(folders, tmp_path):
    cfg = get_config("tiny", {"stages.reflect.corrector": str(folders[1]), "eval.max_new_tokens": 60, "eval.batch_size": 4})
    mc = make_corrector(cfg, tmp_path, device="cpu")
    assert mc.name.endswith("hf") and (mc.prompt_version, mc.cache) == (TEACHER_CORRECTION_VERSION, tmp_path / CORRECTIONS_FILE)
    judged, rows = _judged(3, set())  # three wrong answers
    wrong, _ = first_answers(judged)
    cats = [rows(judged[i])["category"] for i in range(3)]
    replies = [cot_answer(format_cot("What I see.", "What I hear.", "What is asked.", c)) for c in (cats[0], _other(rows(judged[1])))]
    replies.append(f"The sound comes from it. The target is {cats[2]}. It is [SEG].")  # no step headers
    tok = mc.teacher.tokenizer
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in replies]
    assert max(map(len, ids)) < 60
    mc.teacher.generate_kwargs = {"logits_processor": LogitsProcessorList([Force(ids, tok.convert_tokens_to_ids("<|im_end|>"))])}
    ds = RefAVSDataset(ROOT, "train")
    fixed = correct_rows(wrong, mc, ds.__getitem__, rows)
    assert fixed == {0: teacher_reasoning(replies[0])}, fixed
    lines = [json.loads(l) for l in (tmp_path / CORRECTIONS_FILE).read_text().splitlines()]
    assert [(l["key"], l["reason"]) for l in lines] == [(["train", 0, 0], None), (["train", 1, 0], "wrong-target"), (["train", 2, 0], "missing-steps")]
    assert {(l["model_id"], l["prompt_version"]) for l in lines} == {(mc.name, TEACHER_CORRECTION_VERSION)} and lines[1]["text"] == replies[1]
    again = make_corrector(cfg, tmp_path, device="cpu")  # a new run over the same stage folder: everything is in the cache
    again.teacher.reply = lambda *a: pytest.fail("a cached answer was asked again")
    assert correct_rows(wrong, again, lambda i: pytest.fail("a clip was decoded for a cached answer"), rows) == fixed
    assert again.summary().endswith("kept 1, rejected 2 (missing-steps 1, wrong-target 1)")


def test_stage2_trains_on_answers_up_to_its_own_length_limit(folders, tmp_path, monkeypatch):
    "A reflective answer longer than stage 1's limit (2,000 characters) but under stages.reflect.max_cot_chars is trained on."
    cfg = get_config("tiny", {"stages.reflect.kd_weight": 0.0})
    r = ROWS[0]; good = oracle_cot(ANN, r["row"])
    long_answer = splice_reflective("Images: " + "A bell rings on the left. " * 100, good, r["category"])
    assert cfg.stages.sft.max_cot_chars < len(long_answer) < cfg.stages.reflect.max_cot_chars
    write_reflect_jsonl(tmp_path / "r.jsonl", [ReflectRecord("train", 0, r["uid"], r["category"], long_answer, "reflective", "c")])
    class Stop(Exception): pass
    built, real = [], aurora_nb.sft.SFTDataset
    def spy(*a, **k):
        built.append(real(*a, **k)); raise Stop  # the dataset stage 2 would train on; no training needed
    monkeypatch.setattr(aurora_nb.sft, "SFTDataset", spy)
    with pytest.raises(Stop): train_reflect(cfg, tmp_path / "run", folders[0], data_file=tmp_path / "r.jsonl", progress=False)
    assert list(built[0].positions) == [0]


def test_model_corrector_filter(tiny):
    ds = RefAVSDataset(ROOT, "train"); r = ROWS[0]
    cases = [Case("Answer: The target is bell. It is [SEG].", r, judge("", r), ds[0]), Case("x", r, judge("", r), ds[1])]
    mc = ModelCorrector.from_model(tiny)  # an untrained thinker: whatever it writes names no right class
    assert mc(cases) == [None, None] and (mc.kept, mc.dropped) == (0, 2)
    good = oracle_cot(ANN, r["row"])
    stub = ModelCorrector(lambda cs: [good.replace(f"is {r['category']}.", f"is {_other(r)}."), good + " It is [SEG]."])
    assert stub(cases) == [None, good] and (stub.kept, stub.dropped) == (1, 1)


def test_find_wrong_paths_resumes(tiny, tmp_path):
    out = tmp_path / "judged.jsonl"
    first = find_wrong_paths(tiny, split="train", out_path=out, k=1, limit=3, checkpoint="c1", progress=False)
    assert [(r["index"], r["sample"]) for r in first] == [(i, s) for i in range(3) for s in (0, 1)]
    assert all(r["kinds"] and 0 <= r["iou"] <= 1 and r["checkpoint"] == "c1" for r in first)
    assert all(("no_seg" in r["kinds"]) == ("[SEG]" not in r["text"]) for r in first)  # judged on the model's own words, not the fallback
    assert any("no_seg" in r["kinds"] for r in first)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:4]) + lines[4][:20])  # killed while writing the 5th line
    again = find_wrong_paths(tiny, split="train", out_path=out, k=1, limit=3, checkpoint="c1", progress=False)
    assert [(r["index"], r["sample"], r["text"]) for r in again] == [(r["index"], r["sample"], r["text"]) for r in first]
    with pytest.raises(ValueError, match="checkpoint 'c1'"):
        find_wrong_paths(tiny, split="train", out_path=out, k=1, limit=3, checkpoint="c2", progress=False)


def _judged(n_rows, right_rows):
    "Judged greedy answers of the first `n_rows` train rows: right on `right_rows`, wrong class elsewhere."
    samples, out = RefAVSDataset(ROOT, "train").samples, []
    for i in range(n_rows):
        row = ANN["rows"][samples[i].row]; good = oracle_cot(ANN, row["row"]) + " " + SEG_SENTENCE
        text = good if i in right_rows else good.replace(f"The target is {row['category']}.", f"The target is {_other(row)}.")
        j = judge(text, row, 0.9, ANN)
        out.append(dict(split="train", index=i, uid=row["uid"], category=j.category, sample=0, text=text, iou=0.9, target=j.target,
                        kinds=list(j.kinds), false_steps=j.false_steps, checkpoint="c"))
    return out, lambda r: ANN["rows"][samples[r["index"]].row]


@pytest.mark.parametrize("n_right,want", [(0, (5, 0, 5)), (3, (5, 3, 2)), (8, (2, 2, 0))])
def test_plain_paths_are_topped_up_from_the_stage1_cot(n_right, want):
    judged, rows = _judged(10, set(range(10 - n_right, 10)))
    right = stage1_paths(get_config("tiny", [f"data.root={ROOT}"]))
    assert set(right) == set(range(len(RefAVSDataset(ROOT, "train"))))
    oc = OracleCorrector(ANN, style="terse")
    recs = build_reflective_data(judged, oc, rows=rows, right_paths=right)
    got = [sum(r.kind == k and r.origin == o for r in recs) for k, o in (("reflective", "model"), ("plain", "model"), ("plain", "cot"))]
    assert tuple(got) == want
    assert len({r.index for r in recs}) == len(recs) and all(parse_answer(r.answer).target == r.category for r in recs)
    for r in recs:
        if r.origin == "cot": assert r.answer == reasoning_of(right[r.index]) + " " + SEG_SENTENCE and r.errors
    alone = build_reflective_data(judged, oc, rows=rows)  # no stage-1 CoT: the model's own right answers only
    assert sum(r.kind == "reflective" for r in alone) == 10 - n_right and not any(r.origin == "cot" for r in alone)
    if n_right >= 5: assert [(r.index, r.kind, r.answer) for r in recs] == [(r.index, r.kind, r.answer) for r in alone]


class _Kill(Exception): pass


def test_stage_reflect_cli_builds_data_and_resumes(tmp_path, monkeypatch):
    root = tmp_path / "synth"
    make_synthetic_refavs(root, n_videos=4, seed=3)
    over = [f"data.root={root}", "eval.max_new_tokens=12", "stages.reflect.max_steps=4", "stages.reflect.save_steps=2",
            "stages.reflect.batch_size=2", "stages.reflect.logging_steps=1", "stages.reflect.kd_weight=0.0"]
    torch.manual_seed(0)
    save_pretrained(build_model(get_config("tiny", over)), tmp_path / "sft" / "model")
    args = argparse.Namespace(stage="reflect", preset="tiny", config=None, overrides=over, out=str(tmp_path / "run"),
                              init=str(tmp_path / "sft"), teacher=None, data_file=None, no_progress=True)
    step, calls = AuroraSFTTrainer.training_step, []
    def counted(self, *a, **k):
        calls.append(1)
        if len(calls) == 3 and kill: raise _Kill()
        return step(self, *a, **k)
    monkeypatch.setattr(AuroraSFTTrainer, "training_step", counted)
    kill = True
    with pytest.raises(_Kill): train_main(args)
    data = [json.loads(l) for l in (tmp_path / "run" / REFLECT_FILE).read_text().splitlines()]
    assert data and all(d["kind"] in ("reflective", "plain") and parse_answer(d["answer"]).target == d["category"] for d in data)
    assert any(d["kind"] == "reflective" and d["corrector"] == "oracle" and d["errors"] for d in data)
    assert any(d["origin"] == "cot" for d in data)  # an untrained model is always wrong: stage 1's CoT keeps the mix
    judged = (tmp_path / "run" / JUDGED_FILE).stat().st_mtime_ns
    calls.clear(); kill = False
    assert train_main(args) == 0
    assert len(calls) == 2  # resumed from checkpoint-2: two steps left, not four
    assert (tmp_path / "run" / JUDGED_FILE).stat().st_mtime_ns == judged and (tmp_path / "run" / "model").is_dir()
