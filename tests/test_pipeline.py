"""`aurora-nb run` end to end through the console script: every artifact (the bare ablation's too), kill-and-resume, a
failing stage, the plan; the stage-0 answer forms the ablation compares."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aurora_nb.config import config_diff, get_config, load_config
from aurora_nb.data import RefAVSDataset
from aurora_nb.pipeline import ABLATIONS, FIGURE_COLUMNS, Step, _eval_step, ablation_config, prepare_config, results_figure
from aurora_nb.sft import SFTDataset
from aurora_nb.synth import CATEGORIES

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("aurora-nb"))
STAGES = ("teacher", "sft", "reflect", "grpo")
BARE = ABLATIONS["bare"]["title"]  # the tiny preset's ablation: stage 0 answering "It is [SEG]."
SPLITS = ("val", "test_s", "test_u", "test_n")
# two optimizer steps per stage on the committed sample, two rows per split, eight new tokens: minutes, not a result
SHORT = ["data.root=data/synth", "data.synth_videos=0", "eval.limit=2", "eval.max_new_tokens=8", "stages.grpo.batch_size=1",
         "stages.grpo.max_new_tokens=8", "stages.grpo.num_generations=2", "stages.grpo.kl_beta=0"] + [
        f"stages.{s}.{k}={v}" for s in STAGES for k, v in
        dict(max_steps=2, save_steps=2, warmup_steps=0, logging_steps=1, batch_size=2).items() if not (s == "grpo" and k == "batch_size")]


def run(out, *extra, env=None, timeout=900):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run([EXE, "run", "--out", str(out), "--no-progress", *SHORT, *extra], capture_output=True, text=True,
                          cwd=ROOT, env=e, timeout=timeout)


def test_run_killed_after_stage_1_resumes_and_writes_every_artifact(tmp_path):
    out = tmp_path / "run"
    r = run(out, env={"AURORA_NB_STOP_AFTER": "sft"})  # ends the process abruptly after stage 1's marker, like a kill
    assert r.returncode == 75, r.stdout[-3000:] + r.stderr[-3000:]
    assert (out / "done" / "sft.json").is_file() and not (out / "done" / "reflect.json").exists()
    teacher = {p: p.stat().st_mtime_ns for p in (out / "teacher").rglob("*") if p.is_file()}
    r = run(out)  # (a failing ablation that leaves the other steps running is shown in the pipeline chapter's demo)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "stage 0: teacher: done earlier" in r.stdout and "stage 1: CoT SFT + distillation: done earlier" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "teacher").rglob("*") if p.is_file()} == teacher  # stage 0 not recomputed
    assert f"report: {out / 'report.md'}" in r.stdout
    for f in ("report.md", "report.html", "results.json", "config.yaml", "cot/cot.jsonl", "figures/curves.png", "figures/results.png"):
        assert (out / f).is_file(), f
    assert "data:image/png;base64," in (out / "report.html").read_text()
    for s in STAGES:
        assert (out / s / "model" / "aurora_config.yaml").is_file(), s
        for sp in SPLITS: assert (out / "eval" / s / sp / "metrics.json").is_file(), (s, sp)
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "ok" and [e["status"] for e in res["steps"]] == ["done"] * 13
    names = ["stage 0: teacher", "stage 1: CoT SFT + distillation", "stage 2: reflective SFT", "stage 3: GRPO", BARE,
             "empty", "full", "union", "random-object"]
    assert list(res["table"]) == names
    report = (out / "report.md").read_text()
    for n in names: assert f"| {n} |" in report, n
    for name, row in res["table"].items():
        for k in ("Seen J", "Seen F", "Unseen J", "Unseen F", "Mix J&F", "Null S", "right object", "val J"):
            assert isinstance(row[k], float) and 0 <= row[k] <= 1, (name, k, row[k])
        if not name.startswith(("stage", "ablation")): continue
        for k in ("right class", "[SEG] fallback", "format"): assert 0 <= row[k] <= 1, (name, k, row[k])
    assert res["table"]["empty"]["Seen J"] == 0 and res["table"]["full"]["Null S"] == 1  # the references mean what they say
    assert set(res["audio_probe"]) == {"real", "muted", "shuffled"}
    # the ablation: stage 0's settings but the answer, its own evaluation, and stage 0 minus it in a table of its own
    assert config_diff(load_config(out / "teacher" / "config.yaml"), load_config(out / "ablation-bare" / "config.yaml")) == {
        "stages.teacher.answer": ("class", "bare")}
    for sp in SPLITS: assert (out / "eval" / "ablation-bare" / sp / "metrics.json").is_file(), sp
    assert not (out / "eval" / "ablation-bare" / "test_s-muted").exists()  # the audio probe is the final stage's
    effect = res["ablation_effect"]["stage 0 minus the bare ablation"]
    assert effect["Mix J&F"] == pytest.approx(res["table"]["stage 0: teacher"]["Mix J&F"] - res["table"][BARE]["Mix J&F"])
    assert "## What stage 0's answer form adds" in report and (out / "figures" / "cues.png").is_file()


def test_a_run_that_generated_its_benchmark_resumes(tmp_path, monkeypatch):
    # the first invocation saves its config before the data step makes the benchmark; the next one finds it made
    monkeypatch.chdir(ROOT)
    cfg, name = get_config("tiny", ["data.synth_videos=3", "seed=987651"]), "data/synth-3v-seed987651"
    root, out = ROOT / name, tmp_path / "run"
    assert not root.exists()
    out.mkdir()
    first = prepare_config(cfg, out)
    assert first.data.root == load_config(out / "config.yaml").data.root == name  # the same text in every clone
    root.mkdir()
    try: assert config_diff(first, prepare_config(cfg, out)) == {}
    finally: root.rmdir()
    older = get_config("tiny", ["data.synth_videos=3", "seed=987651", f"data.root={root}"])  # saved absolute by an older run
    assert config_diff(older, first) == {} and "data.root" in config_diff(older, get_config("tiny", ["data.synth_videos=3", "seed=987651"]))


def test_stage_0_names_the_class_and_the_bare_ablation_does_not():
    cfg = get_config("tiny", ["data.root=data/synth"])
    assert cfg.stages.teacher.answer == get_config("full").stages.teacher.answer == "class"  # the released form by default
    base = RefAVSDataset.from_config(cfg.data, "train")
    samples = base.samples  # answers need the rows' classes only, no clip is read
    plain, bare = SFTDataset(base, "teacher"), SFTDataset(base, "teacher", answer_form=ablation_config(cfg, "bare").stages.teacher.answer)
    assert [plain.answer(s.index, s.category) for s in samples] == [f"It is {s.category} [SEG]." for s in samples]
    answers = {bare.answer(s.index, s.category) for s in samples}
    assert answers == {"It is [SEG]."} and not any(c in a for a in answers for c in CATEGORIES)


def test_a_failing_stage_leaves_a_report_naming_it_and_a_changed_config_is_refused(tmp_path):
    out = tmp_path / "run"
    r = run(out, env={"AURORA_NB_FAIL_IN": "teacher"})
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert (out / "done" / "data.json").is_file() and not (out / "done" / "teacher.json").exists()
    report = (out / "report.md").read_text()
    assert report.startswith("# aurora_nb run: failed") and "## Failed step: stage 0: teacher" in report
    assert "failure injected by AURORA_NB_FAIL_IN=teacher" in report
    assert json.loads((out / "results.json").read_text())["steps"][1]["status"] == "failed"
    r = run(out, "eval.limit=3")
    assert r.returncode == 2 and "other settings" in r.stderr and "eval.limit" in r.stderr, r.stderr


def test_full_preset_plan_checks_config_data_and_paths_without_weights(tmp_path):
    r = subprocess.run([EXE, "run", "--preset", "full", "--data", "data/synth", "--out", str(tmp_path / "full"), "--plan",
                        "eval.ablations=[bare]"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Qwen/Qwen2.5-Omni-7B" in r.stdout and "data: OK" in r.stdout and "oracle" in r.stdout
    for title in ("stage 0: teacher", "stage 3: GRPO", "reference predictors", BARE, "evaluate the bare ablation"): assert title in r.stdout
    assert str(tmp_path / "full" / "eval" / "ablation-bare") in r.stdout
    assert str(tmp_path / "full" / "eval" / "teacher") in r.stdout
    assert not (tmp_path / "full").exists()  # a plan writes nothing
    r = subprocess.run([EXE, "run", "--preset", "full", "--data", str(tmp_path / "nothing"), "--plan"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1 and "missing-csv" in r.stdout, r.stdout + r.stderr


class Placed(Exception):
    "Raised by the patched `run_device`: the code asked where to place a model."


def _raise_placed(device=None): raise Placed(device)


def test_the_evaluation_step_places_the_model_it_loads(tmp_path, monkeypatch):
    # a stage's evaluation loads the final model outside any Trainer: it must put it on the run's device (the GPU)
    import aurora_nb.evaluate, aurora_nb.model
    from aurora_nb.model import build_model, save_pretrained
    cfg = get_config("tiny", ["data.root=data/synth", "eval.limit=1"])
    save_pretrained(build_model(cfg), tmp_path / "teacher" / "model")
    step = Step("eval-teacher", "evaluate stage 0", "eval", tmp_path / "eval" / "teacher", "teacher", run=tmp_path / "teacher")
    def too_late(*a, **k): raise AssertionError("the model reached evaluate() without being placed where it was loaded")
    monkeypatch.setattr(aurora_nb.evaluate, "evaluate", too_late)  # evaluate() places too: the step's own loading must
    monkeypatch.setattr(aurora_nb.model, "run_device", _raise_placed)  # `place` looks it up at call time
    with pytest.raises(Placed): _eval_step(cfg, step, dict(final_stage="grpo", progress=False))


def test_results_figure_has_a_cell_per_score_and_none_where_a_row_has_no_value():
    import matplotlib; matplotlib.use("Agg")
    model = {c: 0.25 for c in FIGURE_COLUMNS} | {"val J": 0.5, "[SEG] fallback": 0.1}  # two columns the figure leaves out
    ref = {c: 0.75 for c in FIGURE_COLUMNS} | {"right class": None, "format": None}  # a reference predictor writes no answer
    ax = results_figure({"stage 0: teacher": model, "union": ref})
    assert [t.get_text() for t in ax.get_yticklabels()] == ["stage 0: teacher", "union"]
    assert [t.get_text() for t in ax.get_xticklabels()] == [c + (" (lower is better)" if c == "Null S" else "") for c in FIGURE_COLUMNS]
    cells = sorted(t.get_text() for t in ax.texts)
    assert cells == ["0.25"] * len(FIGURE_COLUMNS) + ["0.75"] * (len(FIGURE_COLUMNS) - 2)  # no number for the missing two
