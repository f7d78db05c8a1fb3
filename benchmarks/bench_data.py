"""Dataset throughput: clips per second through a torch DataLoader with 0 and 2 workers.

Generates a synthetic Ref-AVS benchmark in a temporary folder (16 kHz mono WAVs, and optionally the real formats:
48 kHz stereo, null folders 44.1 kHz mono, which the loader must resample), then reads every clip of all five
splits (frames, 16 kHz mono audio, masks) a few times with each worker count. Ratios are measured in one run.

    python benchmarks/bench_data.py                      # 24 clips at 128 px, both audio formats
    python benchmarks/bench_data.py --videos 48 --size 224 --repeats 3
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from aurora_nb.data import SPLITS, RefAVSDataset, collate_clips
from aurora_nb.synth import make_synthetic_refavs


def throughput(root: Path, workers: int, batch_size: int, repeats: int) -> tuple[float, int]:
    "Clips per second over every split, best of `repeats` passes (after one warm-up pass)."
    ds = torch.utils.data.ConcatDataset([RefAVSDataset(root, s) for s in SPLITS])
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_clips,
                                     persistent_workers=workers > 0)
    best = 0.0
    for i in range(repeats + 1):
        t0 = time.perf_counter(); n = sum(len(b) for b in dl); dt = time.perf_counter() - t0
        if i: best = max(best, n / dt)
    return best, len(ds)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=24, help="normal clips to generate")
    ap.add_argument("--size", type=int, default=128, help="frame side in pixels")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per setting (best is kept)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--formats", nargs="+", default=["16k-mono", "real"], choices=["16k-mono", "real"],
                    help="WAV formats: 16 kHz mono, or the real 48 kHz stereo / 44.1 kHz mono")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in a.formats:
            root = Path(tmp) / fmt
            audio = dict(sample_rate=16000, channels=1) if fmt == "16k-mono" else dict(sample_rate=48000, channels=2, null_sample_rate=44100)
            make_synthetic_refavs(root, n_videos=a.videos, seed=0, size=a.size, **audio)
            base = None
            for w in a.workers:
                cps, n = throughput(root, w, a.batch_size, a.repeats)
                base = base or cps
                rows.append([fmt, n, w, f"{cps:.1f}", f"{cps / base:.2f}x"])
    print(tabulate(rows, headers=["audio format", "clips", "workers", "clips/s", f"vs {a.workers[0]} workers"]))


if __name__ == "__main__":
    main()
