"""Stage-1 training step with stored teacher targets vs a live teacher (time and peak memory), and training samples/s
with and without the SAM embedding cache. Each configuration runs in a fresh process so that its peak memory is its own.

    .venv/bin/python benchmarks/bench_sft.py [--steps 6] [--batch 2]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(kind: str, steps: int, batch: int) -> dict:
    "Train `steps` + 1 optimizer steps of one configuration in this process; seconds per step after the first, peak RSS."
    import torch
    from transformers import TrainerCallback
    from aurora_nb.config import get_config
    from aurora_nb.sft import train_stage
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    tmp = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    base = {f"stages.{s}.{k}": v for s in ("teacher", "sft") for k, v in
            {"max_steps": 1, "batch_size": batch, "save_steps": 10_000, "logging_steps": 10_000}.items()}
    train_stage(get_config("tiny", base), "teacher", tmp / "teacher", progress=False)  # a stage-0 model to distil from
    over = {**base, "stages.sft.max_steps": steps + 1}
    if kind.startswith("cache"):  # the cache needs a frozen SAM encoder
        over.update({"model.freeze_sam_encoder": True, "model.cache_sam_embeddings": kind == "cache-on",
                     "model.cache_dir": str(tmp / "sam-cache"), "stages.sft.max_steps": 2 * steps + 1})
    times = []

    class Clock(TrainerCallback):  # end to end of consecutive steps: collation (and a live teacher's batch) included
        t = None
        def on_step_end(self, args, state, control, **kw):
            now = (time.perf_counter(), time.process_time())  # wall and this process's CPU time (robust to other jobs)
            if self.t is not None: times.append((now[0] - self.t[0], now[1] - self.t[1]))
            self.t = now

    train_stage(get_config("tiny", over), "sft", tmp / "sft", teacher=tmp / "teacher", callbacks=[Clock()],
                progress=False, live_teacher=kind == "live")
    if kind.startswith("cache"): times = times[-steps:]  # second pass over the same rows: the cache is warm
    step, cpu = (sum(t[i] for t in times) / len(times) for i in (0, 1))
    return dict(kind=kind, steps=len(times), batch=batch, step_s=round(step, 3), cpu_s=round(cpu, 3), samples_per_s=round(batch / step, 2),
                peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per configuration")
    p.add_argument("--batch", type=int, default=2, help="rows per step")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.steps, a.batch))); return
    rows = []
    for kind in ("stored", "live", "cache-off", "cache-on"):
        r = subprocess.run([sys.executable, __file__, "--one", kind, "--steps", str(a.steps), "--batch", str(a.batch)],
                           capture_output=True, text=True, cwd=ROOT)
        if r.returncode: sys.exit(f"{kind} failed:\n{r.stderr[-3000:]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    by = {r["kind"]: r for r in rows}
    print(f"stage-1 step, stored targets vs live teacher: {by['stored']['step_s']:.3f} s vs {by['live']['step_s']:.3f} s wall "
          f"({by['stored']['step_s'] / by['live']['step_s']:.2f}x), {by['stored']['cpu_s']:.3f} vs {by['live']['cpu_s']:.3f} "
          f"CPU s ({by['stored']['cpu_s'] / by['live']['cpu_s']:.2f}x the time; goal <= 0.8x), "
          f"peak RSS {by['stored']['peak_rss_mb']} MB vs {by['live']['peak_rss_mb']} MB")
    print(f"samples/s with a frozen SAM encoder: cache off {by['cache-off']['samples_per_s']}, cache on {by['cache-on']['samples_per_s']}")


if __name__ == "__main__":
    main()
