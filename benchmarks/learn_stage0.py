"""What makes stage 0 learn to name the referred class at tiny scale: a measured probe of three levers.

Trains the tiny preset's model on the stage-0 answer "It is <class> [SEG]." (CE + 2·BCE + 0.5·Dice, AdamW, batch 8,
warm-up then linear decay) in a tight loop over pre-collated batches (input preparation is done once), and every
`--eval-every` steps reports, on `val`, the teacher-forced right-class rate (the whole answer predicted right, which is
what greedy decoding would produce), per cue type, and the mean frame IoU of the decoded mask.

Levers, each a flag, so one run measures one change:
- `--wide`: a 4-layer, 128-wide LLM instead of the tiny preset's 2-layer, 64-wide one (the encoders are unchanged);
- `--warmup-steps N`: N first steps of a perception warm-up that stands in for the pretrained encoders a real run
  loads: the answer lists the clip's objects left to right and the sounds heard in order of onset ("I see drum, gong.
  I hear gong."), CE only; then the stage-0 answer for `--steps - N` steps with a fresh optimizer and schedule.

Make the benchmark first (`aurora-nb synth --videos 400 --seed 1 --out data/synth-train`), then for example:
    python benchmarks/learn_stage0.py --steps 600
    python benchmarks/learn_stage0.py --steps 900 --warmup-steps 300
It takes 15-30 minutes per run on 2 CPU cores. Never point it at a test split: it reads `train` and `val` only.
"""
import argparse, collections, json, random, time

import numpy as np, torch

from aurora_nb.config import get_config
from aurora_nb.cot import chat_builder, teacher_answer
from aurora_nb.data import RefAVSDataset
from aurora_nb.model import AuroraCollator, build_model, model_inputs

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--root", default="data/synth-train", help="a synthetic Ref-AVS root (with annotations.json)")
p.add_argument("--steps", type=int, default=600, help="optimizer steps in all (warm-up included)")
p.add_argument("--warmup-steps", type=int, default=0, help="perception warm-up steps before stage 0 (0: none)")
p.add_argument("--wide", action="store_true", help="a 4-layer, 128-wide LLM")
p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--train-rows", type=int, default=800, help="train rows used (shuffled with a fixed seed)")
p.add_argument("--val-rows", type=int, default=160, help="val rows scored")
p.add_argument("--eval-every", type=int, default=150)
p.add_argument("overrides", nargs="*", help="config KEY=VALUE overrides on top of the tiny preset")
a = p.parse_args()

torch.manual_seed(0); random.seed(0)
cfg = get_config("tiny", [f"data.root={a.root}", "data.system_prompt=none", "data.llm_audio_seconds=4", *a.overrides])
if a.wide: cfg.model.thinker_size.update(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                          num_attention_heads=4, num_key_value_heads=2)
ann = json.load(open(f"{a.root}/annotations.json"))
cue = {r["uid"]: r["cue"] for r in ann["rows"]}
model = build_model(cfg)
collate = AuroraCollator(model.processor, cfg, "answer", build_messages=chat_builder(cfg))
heard_s = cfg.data.llm_audio_seconds or 10

def caption(it: dict) -> str:
    "The perception warm-up answer: objects left to right, then the sounds the LLM hears, in order of onset."
    objs = sorted(ann["clips"][it["vid"]]["objects"], key=lambda o: o["centers"][0][0])
    heard = sorted((o for o in objs if any(s < heard_s for s, _ in o["sounding"])), key=lambda o: min(s for s, _ in o["sounding"]))
    return f"I see {', '.join(o['category'] for o in objs)}. I hear {', '.join(o['category'] for o in heard) or 'nothing'}."

def rows(split: str, n: int) -> list[dict]:
    ds = RefAVSDataset(a.root, split)
    idx = list(range(len(ds))); random.Random(1).shuffle(idx)
    return [{**ds[i], "answer": teacher_answer(ds[i]["category"])} for i in idx[:n]]

def batches(items: list[dict], bs: int) -> list[dict]:
    out = []
    for k in range(0, len(items), bs):
        chunk = items[k:k + bs]
        b = collate(chunk)
        n = int(b["feature_attention_mask"].sum(1).max())  # the processor pads the log-mel to 30 s: keep what is heard
        b["input_features"], b["feature_attention_mask"] = b["input_features"][..., :n].clone(), b["feature_attention_mask"][:, :n].clone()
        b["cues"] = [cue.get(c["uid"], "?") for c in chunk]
        out.append(b)
    return out

t0 = time.time()
train, val = rows("train", a.train_rows), rows("val", a.val_rows)
train_b, val_b = batches(train, a.batch_size), batches(val, 16)
warm_b = batches([{**it, "answer": caption(it)} for it in train], a.batch_size) if a.warmup_steps else []
print(f"collated {len(train)} train / {len(val)} val rows in {time.time() - t0:.0f} s; e.g. {caption(train[0])!r}", flush=True)

def optimizer(steps: int):
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 20) * max(0.0, 1 - s / steps))

@torch.no_grad()
def evaluate(bl: list[dict]) -> tuple[float, dict, float]:
    model.eval(); right, n, ious = collections.Counter(), collections.Counter(), []
    for b in bl:
        out = model(**model_inputs(b))
        lab = b["labels"][:, 1:]
        ok = ((out.logits[:, :-1].argmax(-1) == lab) | (lab == -100)).all(1)
        for r, c in enumerate(b["cues"]): n[c] += 1; right[c] += int(ok[r])
        m, g = (out.mask_logits > 0).float(), b["gt_masks"]
        inter, union = (m * g).sum((-1, -2)), ((m + g) > 0).float().sum((-1, -2))
        ious.append(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).mean(1))
    model.train()
    return sum(right.values()) / sum(n.values()), {k: round(right[k] / n[k], 2) for k in sorted(n)}, float(torch.cat(ious).mean())

model.train()
opt, sched = optimizer(a.warmup_steps or a.steps)
order, recent, t0 = [], collections.deque(maxlen=20), time.time()
for step in range(1, a.steps + 1):
    warm = step <= a.warmup_steps
    if step == a.warmup_steps + 1 and a.warmup_steps: opt, sched = optimizer(a.steps - a.warmup_steps); order = []
    if not order: order = list(range(len(train_b))); random.shuffle(order)
    out = model(**model_inputs((warm_b if warm else train_b)[order.pop()]))
    (out.ce_loss if warm else out.loss).backward()  # the warm-up answer has no [SEG]: CE only
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sched.step(); opt.zero_grad()
    recent.append(float(out.ce_loss.detach()))
    if step % a.eval_every == 0 or step == a.steps:
        va = evaluate(val_b)
        print(f"step {step} ({'warm-up' if warm else 'stage 0'}) {time.time() - t0:.0f} s  train CE {np.mean(recent):.3f}  "
              f"val right-class {va[0]:.2f} {va[1]}  val mean IoU {va[2]:.3f}", flush=True)
