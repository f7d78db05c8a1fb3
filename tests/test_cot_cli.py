"""CoT data sources and `aurora-nb cot`: the teacher filter (stand-in teachers through the Python API), resume without
asking again, provenance, the real omni teacher on a tiny thinker (forced replies are kept or rejected by the same
filter; a random one keeps nothing and says so), loading a teacher from each kind of source, and the command for the
oracle, the release file and the teacher."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from aurora_nb.cli import main, parse_subcommand
from aurora_nb.config import get_config
from aurora_nb.cot import (REJECT_REASONS, TEACHER_PROMPT_VERSION, TeacherReply, cot_answer, cot_side_files, format_cot, judge_reply,
                           load_teacher, oracle_records, read_cot_jsonl, teacher_instruction, teacher_messages, teacher_reasoning,
                           write_oracle_cot, write_release_cot, write_teacher_cot)
from aurora_nb.data import RefAVSDataset, read_samples
from aurora_nb.model import AuroraCollator

EXE = shutil.which("aurora-nb", path=str(Path(sys.executable).parent)) or shutil.which("aurora-nb")


@pytest.fixture(scope="module")
def synth(repo_root):
    return repo_root / "data" / "synth"


@pytest.fixture(scope="module")
def train(synth):
    return read_samples(synth, "train")


def reply_for(category: str) -> str:
    "A well-formed teacher reply naming `category`."
    return cot_answer(format_cot("What I see.", "What I hear.", "What is asked.", category))


class Scripted:
    "A stand-in teacher: reply text per split index (default: a good reply), finished unless listed; records what it was asked."
    def __init__(self, model_id="scripted", texts=None, unfinished=()):
        self.model_id, self.texts, self.unfinished, self.asked = model_id, texts or {}, set(unfinished), []

    def __call__(self, items):
        self.asked.append([it["index"] for it in items])
        return [TeacherReply(self.texts.get(it["index"], reply_for(it["category"])), it["index"] not in self.unfinished) for it in items]


# ---------------------------------------------------------------- the filter
def test_judge_reply_keeps_only_finished_replies_naming_the_rows_class():
    good = reply_for("hair-dryer")
    assert judge_reply(TeacherReply(good, True), "hair-dryer").reason is None
    assert judge_reply(TeacherReply(good.replace("hair-dryer", "Hair Dryer"), True), "hair-dryer").reason is None  # normalised
    assert judge_reply(TeacherReply(good, False), "hair-dryer").reason == "truncated"
    v = judge_reply(TeacherReply(good, True), "drum")
    assert (v.reason, v.target, v.reasoning) == ("wrong-target", "hair-dryer", None)
    assert judge_reply(TeacherReply("Images: x. It is drum [SEG].", True), "drum").reason == "unparsable"  # teacher form is not enough
    assert judge_reply(TeacherReply("The target is drum", True), "drum").reason == "unparsable"  # unfinished sentence
    assert judge_reply(TeacherReply("The target is drum. It is [SEG].", True), "drum").reason == "missing-steps"
    assert judge_reply(TeacherReply("The target is drum. It is [SEG].", True), "drum", require_steps=False).reason is None
    assert judge_reply(TeacherReply(reply_for("nothing"), True), "null").reason is None  # a null row's reply may say "nothing"


def test_kept_reasoning_ends_with_the_target_sentence():
    good = reply_for("drum")
    assert teacher_reasoning(good + "<|im_end|>") + " It is [SEG]." == good
    assert teacher_reasoning("Images: a. The target is 'the drum'! It is [SEG]. Extra words.") == "Images: a. The target is 'the drum'!"
    assert teacher_reasoning("The target is drum\nIt is [SEG].") == "The target is drum."
    assert teacher_reasoning("It is drum [SEG].") is None
    v = judge_reply(TeacherReply(good + " Anything after.", True), "drum")
    assert v.reason is None and v.reasoning.endswith("The target is drum.") and len(v.reasoning) < len(good)


def test_teacher_instruction_gives_the_class_and_the_contract(train):
    text = teacher_instruction("The one that hums.", "hair-dryer")
    assert "The reference is: The one that hums." in text and "the hair-dryer" in text
    assert text.rstrip().endswith("The target is hair-dryer. It is [SEG].")
    assert all(f"{h}:" in text for h in ("Images", "Audio", "Reference", "Answer"))
    assert "refers to nothing" in teacher_instruction("x", "null")


# ---------------------------------------------------------------- write_teacher_cot with stand-in teachers
def test_filter_drops_wrong_unparsable_truncated_and_unstructured_replies(tmp_path, synth, train):
    texts = {1: reply_for("teapot"), 2: "I cannot tell.", 4: "The target is bell. It is [SEG]."}
    t = Scripted(texts=texts, unfinished={3})
    out = tmp_path / "cot.jsonl"
    s = write_teacher_cot(t, synth, out, limit=6, batch_size=4, progress=False)
    assert [r.index for r in read_cot_jsonl(out)] == [0, 5]
    assert s["rejected"] == {"truncated": 1, "unparsable": 1, "wrong-target": 1, "missing-steps": 1}
    assert list(s["rejected"]) == list(REJECT_REASONS)
    assert (s["rows"], s["kept"], s["written_now"], s["generated_now"], s["already_there"]) == (6, 2, 2, 6, 0)
    assert t.asked == [[0, 1, 2, 3], [4, 5]]  # batched
    for r in read_cot_jsonl(out):
        assert r.provenance == ("teacher", "scripted", TEACHER_PROMPT_VERSION) and r.uid == train[r.index].uid
        assert r.category == train[r.index].category and r.text.endswith(f"The target is {r.category}.")
    side = cot_side_files(out)
    assert json.loads(side["summary"].read_text()) == s
    rej = [json.loads(l) for l in side["rejected"].read_text().splitlines()]
    assert [(r["index"], r["reason"]) for r in rej] == [(1, "wrong-target"), (2, "unparsable"), (3, "truncated"), (4, "missing-steps")]
    assert rej[0]["text"] == texts[1] and rej[0]["target"] == "teapot" and rej[0]["model_id"] == "scripted"


def test_rerun_asks_nothing_and_a_larger_limit_asks_only_the_new_rows(tmp_path, synth):
    out = tmp_path / "cot.jsonl"
    t = Scripted(texts={1: reply_for("teapot")})
    write_teacher_cot(t, synth, out, limit=3, progress=False)
    before = out.read_bytes(), cot_side_files(out)["rejected"].read_bytes()
    s = write_teacher_cot(t, synth, out, limit=3, progress=False)
    assert t.asked == [[0, 1, 2]] and (s["generated_now"], s["already_there"], s["kept"]) == (0, 3, 2)  # rejected rows are not asked again
    assert (out.read_bytes(), cot_side_files(out)["rejected"].read_bytes()) == before
    s = write_teacher_cot(t, synth, out, limit=5, progress=False)
    assert t.asked == [[0, 1, 2], [3, 4]] and (s["kept"], s["rejected"]["wrong-target"]) == (4, 1)


def test_a_killed_run_resumes_and_another_teacher_is_refused_before_asking(tmp_path, synth):
    out = tmp_path / "cot.jsonl"
    write_teacher_cot(Scripted(texts={0: "no answer"}), synth, out, limit=2, progress=False)
    with cot_side_files(out)["rejected"].open("a") as f: f.write('{"split": "train", "index": 2, "rea')  # killed mid-line
    with out.open("a") as f: f.write('{"split": "train", "index": 3, "te')
    t = Scripted()
    s = write_teacher_cot(t, synth, out, limit=4, progress=False)
    assert t.asked == [[2, 3]] and s["kept"] == 3 and s["rejected"]["unparsable"] == 1
    other = Scripted(model_id="another/model")
    with pytest.raises(ValueError, match="holds CoT with"): write_teacher_cot(other, synth, out, limit=5, progress=False)
    empty = tmp_path / "e.jsonl"  # nothing kept yet, but the rejected replies name their teacher
    write_teacher_cot(Scripted(texts={0: "x"}), synth, empty, limit=1, progress=False)
    with pytest.raises(ValueError, match="rejected by 'scripted'"): write_teacher_cot(other, synth, empty, limit=2, progress=False)
    assert other.asked == []


def test_teacher_needs_a_name_and_a_reply_per_row(tmp_path, synth):
    with pytest.raises(ValueError, match="model_id"): write_teacher_cot(lambda items: [], synth, tmp_path / "a.jsonl", limit=1)
    with pytest.raises(ValueError, match="2 rows"):
        write_teacher_cot(lambda items: [], synth, tmp_path / "b.jsonl", limit=2, model_id="mute", progress=False)


# ---------------------------------------------------------------- oracle and release writers
def test_oracle_writer_is_resumable_and_limited(tmp_path, synth, train):
    out = tmp_path / "o.jsonl"
    s = write_oracle_cot(synth, out, limit=3)
    assert (s["rows"], s["kept"], s["written_now"]) == (3, 3, 3)
    s = write_oracle_cot(synth, out)
    assert (s["rows"], s["kept"], s["written_now"], s["already_there"]) == (len(train), len(train), len(train) - 3, 3)
    assert read_cot_jsonl(out) == list(oracle_records(synth, "train"))


def test_release_writer_refuses_a_misaligned_file_without_writing(tmp_path, synth, train):
    entries = [{"reasoning": r.text} for r in oracle_records(synth, "train")]
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(entries)); bad.write_text(json.dumps(entries[2:] + entries[:2]))
    s = write_release_cot(good, synth, tmp_path / "r.jsonl", limit=10)
    assert (s["rows"], s["kept"], s["checked"], s["rejected"]) == (10, 10, len(train), {"too-long": 0})
    with pytest.raises(ValueError, match="entry"): write_release_cot(bad, synth, tmp_path / "bad.jsonl")
    assert not (tmp_path / "bad.jsonl").exists()


# ---------------------------------------------------------------- the omni teacher on a tiny thinker
@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir):
    """The session's random tiny model (seed 0): its aurora_nb folder (save_pretrained) and the same thinker as a Hugging
    Face checkpoint folder. Shared: read them, never write into them."""
    return tiny_model_dir / "model", tiny_model_dir / "hf"


class Force(LogitsProcessor):
    "Make row b generate exactly `ids[b]` (then end of turn): a scripted reply through the real generate path."
    def __init__(self, ids, eos, prompt_len):
        self.ids, self.eos, self.L = ids, eos, prompt_len

    def __call__(self, input_ids, scores):
        k = input_ids.shape[1] - self.L
        out = torch.full_like(scores, -1e9)
        for b, ids in enumerate(self.ids):
            out[b, ids[k] if k < len(ids) else self.eos] = 0
        return out


def test_omni_teacher_replies_go_through_the_same_filter(tiny_dir, tmp_path, synth):
    "Forced replies from the real teacher: the right class is kept, another class rejected, a reply cut at the cap truncated."
    teacher = load_teacher(tiny_dir[0], device="cpu", max_new_tokens=100)
    tok = teacher.tokenizer
    texts = [reply_for("buzzer"), reply_for("drum")]  # rows 0 and 1 are both buzzers
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert max(map(len, ids)) < 100
    ds = RefAVSDataset(synth, "train", with_masks=False)
    items = [{**ds[i], "expression": teacher_instruction(ds[i]["expression"], ds[i]["category"])} for i in (0, 1)]
    L = AuroraCollator(teacher.processor, teacher.config, None, False, False, build_messages=teacher_messages)(items)["input_ids"].shape[1]
    teacher.generate_kwargs = {"logits_processor": LogitsProcessorList([Force(ids, tok.convert_tokens_to_ids("<|im_end|>"), L)])}
    s = write_teacher_cot(teacher, synth, tmp_path / "t.jsonl", limit=2, batch_size=2, progress=False)
    assert (s["kept"], s["rejected"]["wrong-target"]) == (1, 1), s
    rec = read_cot_jsonl(tmp_path / "t.jsonl")[0]
    assert rec.index == 0 and cot_answer(rec.text) == texts[0] and rec.model_id == teacher.model_id
    teacher.max_new_tokens = 10  # the same forced replies, cut at 10 tokens
    s = write_teacher_cot(teacher, synth, tmp_path / "cut.jsonl", limit=2, batch_size=2, progress=False)
    assert (s["kept"], s["rejected"]["truncated"]) == (0, 2)


def test_a_random_tiny_teacher_keeps_nothing_and_says_so(tiny_dir, tmp_path, synth, capsys):
    assert EXE, "the aurora-nb console script is not installed"
    out = tmp_path / "run" / "cot.jsonl"
    cmd = [EXE, "cot", "--teacher", str(tiny_dir[0]), "--data", str(synth), "--out", str(out), "--limit", "2",
           "--max-new-tokens", "6", "--batch-size", "2", "--device", "cpu", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "kept 0" in r.stdout and "truncated 2" in r.stdout and "nothing passed the filter" in r.stdout, r.stdout
    assert out.is_file() and read_cot_jsonl(out) == []
    summary = json.loads(cot_side_files(out)["summary"].read_text())
    assert (summary["source"], summary["prompt_version"], summary["kept"], summary["max_new_tokens"]) == ("teacher", TEACHER_PROMPT_VERSION, 0, 6)
    rejected = cot_side_files(out)["rejected"].read_bytes()
    assert [json.loads(l)["index"] for l in rejected.splitlines()] == [0, 1]
    assert main(cmd[1:]) == 0  # again (in this process, to save a start-up): every row is decided, nothing is generated
    printed = capsys.readouterr().out
    assert "generated now 0" in printed and "already there 2" in printed, printed
    assert cot_side_files(out)["rejected"].read_bytes() == rejected


class Placed(Exception):
    "Raised by a stand-in `run_device`: the loader went through `place`."


def test_load_teacher_places_its_thinker_by_the_device_rule(tiny_dir, monkeypatch):
    "Both kinds of folder go through `place` (aurora_nb.model's device rule), with the default device and an explicit one."
    import aurora_nb.model
    def sentinel(device=None): raise Placed(device)
    monkeypatch.setattr(aurora_nb.model, "run_device", sentinel)
    for src in tiny_dir:
        with pytest.raises(Placed) as e: load_teacher(src, preset="tiny")
        assert e.value.args[0] in (None, "auto"), src
    with pytest.raises(Placed) as e: load_teacher(tiny_dir[1], preset="tiny", device="cpu")
    assert e.value.args[0] == "cpu"


def test_teacher_sources_checkpoint_folder_and_missing_ones(tiny_dir, tmp_path):
    t = load_teacher(tiny_dir[1], preset="tiny", device="cpu", max_new_tokens=3)
    assert t.model_id.endswith("hf") and t.config.model.thinker == str(tiny_dir[1]) and t.thinker.device.type == "cpu"
    run = get_config("tiny", {"data.llm_frames": 2})  # a run's own settings (as stage 2's corrector passes them)
    t = load_teacher(tiny_dir[1], config=run, device="cpu")
    assert t.config.data.llm_frames == 2 and t.config.model.thinker == str(tiny_dir[1]) and run.model.thinker != str(tiny_dir[1])
    with pytest.raises(FileNotFoundError, match=r"teacher 'nobody/no-such-omni'.*HF_HUB_OFFLINE is set.*aurora_config.yaml"):
        load_teacher("nobody/no-such-omni", device="cpu")
    with pytest.raises(FileNotFoundError, match="no such folder"): load_teacher(tmp_path / "missing", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither config.json nor aurora_config.yaml"): load_teacher(tmp_path / "empty")


# ---------------------------------------------------------------- the command
def test_cot_sources_are_mutually_exclusive_and_options_belong_to_one(capsys):
    for argv, msg in [(["--oracle", "--teacher", "m"], "not allowed with argument"),
                      ([], "one of the arguments --oracle --teacher --release is required"),
                      (["--oracle", "--max-new-tokens", "8"], "--max-new-tokens goes with --teacher, not with --oracle"),
                      (["--teacher", "m", "--seed", "1"], "--seed goes with --oracle, not with --teacher"),
                      (["--oracle", "--max-mismatch", "0.1"], "--max-mismatch goes with --release"),
                      (["--release", "r.json", "--preset", "tiny"], "--preset goes with --teacher"),
                      (["--teacher", "m", "--batch-size", "0"], "--batch-size must be at least 1")]:
        with pytest.raises(SystemExit) as e: parse_subcommand("cot", [*argv, "--data", "d", "--out", "o.jsonl"])
        assert e.value.code == 2 and msg in capsys.readouterr().err, argv


def test_cot_command_oracle_and_release(tmp_path, synth, train, capsys):
    out = tmp_path / "o.jsonl"
    assert main(["cot", "--oracle", "--data", str(synth), "--out", str(out), "--limit", "4"]) == 0
    assert "kept 4" in capsys.readouterr().out and len(read_cot_jsonl(out)) == 4
    assert main(["cot", "--oracle", "--data", str(synth), "--out", str(out), "--seed", "1"]) == 1  # other wording, same file
    assert "holds CoT with" in capsys.readouterr().err
    entries = [{"reasoning": r.text} for r in oracle_records(synth, "train")]
    (tmp_path / "rel.json").write_text(json.dumps(entries))
    assert main(["cot", "--release", str(tmp_path / "rel.json"), "--data", str(synth), "--out", str(tmp_path / "r.jsonl")]) == 0
    assert f"kept {len(train)}" in capsys.readouterr().out
    (tmp_path / "short.json").write_text(json.dumps(entries[1:]))
    assert main(["cot", "--release", str(tmp_path / "short.json"), "--data", str(synth), "--out", str(tmp_path / "s.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "aurora-nb cot: error:" in err and "short.json" in err and "aligned by position" in err
    assert main(["cot", "--oracle", "--data", str(tmp_path), "--out", str(tmp_path / "x.jsonl")]) == 1
    assert "metadata.csv" in capsys.readouterr().err


def test_cot_command_names_a_missing_teacher(tmp_path, synth, capsys):
    assert main(["cot", "--teacher", "Qwen/Qwen2.5-Omni-7B", "--data", str(synth), "--out", str(tmp_path / "t.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "'Qwen/Qwen2.5-Omni-7B'" in err and "HF_HUB_OFFLINE is set" in err and "hf download Qwen/Qwen2.5-Omni-7B" in err
    assert not (tmp_path / "t.jsonl").exists()


def test_oracle_styles_are_separate_files(tmp_path, synth, train):
    out = tmp_path / "t.jsonl"
    assert main(["cot", "--oracle", "--style", "terse", "--data", str(synth), "--out", str(out)]) == 0
    recs = read_cot_jsonl(out)
    assert {r.prompt_version for r in recs} == {"oracle-terse-v1+seed0"} and len(recs) == len(train)
    assert recs == list(oracle_records(synth, "train", style="terse"))
    assert recs != list(oracle_records(synth, "train"))
    with pytest.raises(ValueError, match="holds CoT with"):  # one provenance per file: no mixing of wordings
        write_oracle_cot(synth, out)
    with pytest.raises(ValueError, match="expected one of 'full', 'terse'"):
        write_oracle_cot(synth, tmp_path / "x.jsonl", style="short")
