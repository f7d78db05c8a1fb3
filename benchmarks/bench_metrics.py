"""Official Ref-AVS F: the literal 255-pass definition against the histogram F, on the same frames, side by side.

    .venv/bin/python benchmarks/bench_metrics.py                   # 1,000 frames at 256×256, batches of 40
    .venv/bin/python benchmarks/bench_metrics.py --frames 200 --threads 2

Frames are scored in the official batches of 40 (4 expressions × 10 frames); every batch's F must be identical
(bit-equal Python floats) between the two methods, and the per-frame curves are compared bit for bit too.
"""
import argparse
import time

import torch

from aurora_nb.metrics import f_curve_direct, f_curves, f_measure, mask_iou


def make_batch(n, size, gen):
    "Blob-shaped GT with noisy logits; a tenth of the frames have empty GT; some logits tie on thresholds."
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy, cx, r = (torch.rand(3, n, 1, 1, generator=gen) * torch.tensor([size, size, size / 3]).view(3, 1, 1, 1))
    gt = ((yy - cy) ** 2 + (xx - cx) ** 2) < (r + 4) ** 2  # [n, size, size]
    gt[torch.rand(n, generator=gen) < 0.1] = False
    logits = (gt.float() * 2 - 1) * 2 + torch.randn(n, size, size, generator=gen) * 1.5
    logits[:, :2] = 0.0  # sigmoid exactly 0.5 = θ_127: ties
    return logits, gt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=40, help="frames per official batch (4 rows × 10 frames)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on a shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(a.seed)
    batches = [make_batch(min(a.batch, a.frames - i), a.size, gen) for i in range(0, a.frames, a.batch)]
    probs = [torch.sigmoid(x) for x, _ in batches]

    def run(method):
        t = time.perf_counter()
        out = [f_measure(p, y, method)[0] for p, (_, y) in zip(probs, batches)]
        return out, time.perf_counter() - t

    f_measure(probs[0][:2], batches[0][1][:2], "fast")  # warm-up
    fast, t_fast = run("fast")
    direct, t_direct = run("direct")
    t = time.perf_counter()
    js = [float(mask_iou(p, y)) for p, (_, y) in zip(probs, batches)]
    t_j = time.perf_counter() - t
    curves_equal = all(torch.equal(f_curves(p[:3], y[:3]), torch.stack([f_curve_direct(q, z) for q, z in zip(p[:3], y[:3])]))
                       for p, (_, y) in zip(probs, batches))
    n = a.frames
    print(f"F on {n} frames at {a.size}×{a.size} in {len(batches)} batches, {a.threads} thread(s)\n")
    print(f"| method | seconds | ms / frame | speed-up |")
    print(f"|---|---|---|---|")
    print(f"| direct (255 passes) | {t_direct:.2f} | {1e3 * t_direct / n:.2f} | 1.0× |")
    print(f"| histogram | {t_fast:.2f} | {1e3 * t_fast / n:.2f} | {t_direct / t_fast:.1f}× |")
    print(f"| (J, for scale) | {t_j:.2f} | {1e3 * t_j / n:.2f} | |")
    print(f"\nbatch F identical (bit-equal floats): {fast == direct}; per-frame curves bit-equal: {curves_equal}; "
          f"mean F {sum(fast) / len(fast):.6f}, mean J {100 * sum(js) / len(js):.4f}")
    if fast != direct or not curves_equal: raise SystemExit("MISMATCH between fast and direct F")


if __name__ == "__main__":
    main()
