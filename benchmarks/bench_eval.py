"""Evaluation speed on the tiny model: rows/s of batched generation (eval.batch_size rows per `predict` call) against
one row at a time, on the same rows, one run each, and the share of evaluation time spent scoring.

    .venv/bin/python benchmarks/bench_eval.py [--split test_u] [--batch-size 4] [--max-new-tokens 16]
"""
import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from aurora_nb.config import get_config
from aurora_nb.evaluate import evaluate
from aurora_nb.model import build_model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="test_u")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=16, help="an untrained model never stops: this is every row's length")
    a = ap.parse_args(argv)
    cfg = get_config("tiny", [f"eval.max_new_tokens={a.max_new_tokens}"])
    torch.manual_seed(0)
    model = build_model(cfg)
    evaluate(model, cfg, a.split, limit=2, batch_size=2)  # warm-up (first-call allocations)
    res = {}
    for name, bs in (("one by one", 1), (f"batched ({a.batch_size})", a.batch_size)):
        t0 = time.perf_counter()
        m = evaluate(model, cfg, a.split, batch_size=bs)
        res[name] = (m, time.perf_counter() - t0)
    print(f"tiny model, {a.split}: {m['n_rows']} rows, max_new_tokens={a.max_new_tokens}, torch threads={torch.get_num_threads()}")
    print("| generation | rows/s | total s | generate s | score s | io s | scoring share |")
    print("|---|---|---|---|---|---|---|")
    for name, (m, t) in res.items():
        tm = m["timing"]
        print(f"| {name} | {m['n_rows'] / t:.2f} | {t:.2f} | {tm['generate']:.2f} | {tm['score']:.2f} | {tm['io']:.2f} | {tm['score'] / tm['total']:.0%} |")
    (m1, _), (m2, _) = res.values()
    print(f"same J: {m1['J'] == m2['J']} ({m1['J']:.6f} vs {m2['J']:.6f})")


if __name__ == "__main__":
    main()
