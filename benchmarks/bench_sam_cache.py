"""SAM image-embedding cache: one training epoch of the tiny model with its SAM encoder frozen, without and with the cache.

Each epoch is a plain loop over the clips (batch of 2): the CPU collator (processor, SAM pixel values, frame keys),
the model step's SAM embeddings (cache lookup, or the frozen encoder), forward (CE + 2 BCE + 0.5 Dice), backward,
AdamW. The SAM-input column times only the embedding step, which the cache replaces. The cached run is timed twice: the first epoch fills the cache
(cold), the second reads it (warm) -- the situation of every later epoch, stage and evaluation. All three runs
happen in this one process, side by side, so the ratios are comparable.

    python benchmarks/bench_sam_cache.py                     # the committed sample, data/synth (train split)
    python benchmarks/bench_sam_cache.py --items 16 --sam-image-size 256
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(k, v)

import torch
from tabulate import tabulate

from aurora_nb.config import get_config
from aurora_nb.data import RefAVSDataset
from aurora_nb.cot import build_messages, with_teacher_answers
from aurora_nb.model import AuroraCollator, build_model, enable_embedding_cache, model_inputs


def load_items(root: Path, split: str, n: int) -> list[dict]:
    "The first `n` clips of `split` under `root` (a synthetic sample is generated when `root` is missing)."
    if not (root / "metadata.csv").exists():
        from aurora_nb.synth import make_synthetic_refavs
        root = Path(tempfile.mkdtemp()) / "synth"
        make_synthetic_refavs(root, seed=0)
    ds = RefAVSDataset(root, split)
    return [ds[i] for i in range(min(n, len(ds)))]


def epoch(model, items: list[dict], batch_size: int, opt) -> tuple[float, float]:
    "Seconds for one pass of forward + backward + AdamW over `items`, and the part spent getting SAM embeddings."
    model.train()
    collate = AuroraCollator(model.processor, model.config, build_messages=build_messages)  # CPU only: tokens, SAM pixel values, frame keys
    t0, sam_s = time.perf_counter(), 0.0
    for i in range(0, len(items), batch_size):
        batch = collate(with_teacher_answers(items[i:i + batch_size]))
        inputs = model_inputs(batch)
        px, keys = inputs.pop("sam_pixel_values"), inputs.pop("sam_frame_keys")
        t1 = time.perf_counter()
        with torch.no_grad():  # what forward's model step does: read (or fill) the cache, else run the frozen encoder
            inputs["sam_image_embeddings"] = model.sam_embeddings(px, None, keys)
        sam_s += time.perf_counter() - t1
        out = model(**inputs)  # loss = CE + 2 BCE + 0.5 Dice
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    return time.perf_counter() - t0, sam_s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="data/synth", help="Ref-AVS root (default: the committed synthetic sample)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--items", type=int, default=12, help="clips per epoch")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="warm epochs per run, interleaved; the fastest is kept")
    ap.add_argument("--sam-image-size", type=int, default=128, help="SAM input side (tiny preset: 128)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    items = load_items(Path(args.root), args.split, args.items)
    with tempfile.TemporaryDirectory() as cache_dir:
        runs = {}
        for name, cache in [("no cache", False), ("cache", True)]:
            cfg = get_config("tiny", {"model.freeze_sam_encoder": True, "model.cache_sam_embeddings": cache,
                                      "model.sam_image_size": args.sam_image_size, "model.cache_dir": cache_dir})
            model = build_model(cfg)
            enable_embedding_cache(model)
            runs[name] = (model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4))
        epoch(runs["no cache"][0], items[:args.batch_size], args.batch_size, runs["no cache"][1])  # one-time warm-up
        cold = epoch(runs["cache"][0], items, args.batch_size, runs["cache"][1])  # fills the cache
        best = {name: (float("inf"), 0.0) for name in runs}
        for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
            for name, (model, opt) in runs.items():
                best[name] = min(best[name], epoch(model, items, args.batch_size, opt))
        store = runs["cache"][0].embedding_cache
    base, base_sam = best["no cache"]
    rows = [["no cache", len(items), *map(lambda x: round(x, 2), best["no cache"]), "-", 1.0, 1.0],
            ["cache, cold (fills it)", len(items), round(cold[0], 2), round(cold[1], 2), "-",
             round(base / cold[0], 2), round(base_sam / cold[1], 1)],
            ["cache, warm", len(items), *map(lambda x: round(x, 2), best["cache"]), f"{store.hits}/{store.misses}",
             round(base / best["cache"][0], 2), round(base_sam / best["cache"][1], 1)]]
    print(tabulate(rows, headers=["run", "clips", "epoch s", "SAM-input s", "hits/misses", "epoch speed-up",
                                  "SAM-input speed-up"]))


if __name__ == "__main__":
    main()
