"""Keep the results of a `make demo` run for the pipeline chapter's figure.

    make demo                                      # writes runs/demo/results.json (tiny preset, the whole method)
    python benchmarks/demo_results.py runs/demo    # -> benchmarks/demo_results.json

The kept file is the run's results.json without what differs from one machine or invocation to the next (wall and
finishing times, package and platform versions, tracebacks): the status, preset, config, data root, rows per split,
the results table, the ablation's effect, the audio probe, per-cue J and the self-correction table, numbers rounded
to six digits. The pipeline chapter (nbs/13_pipeline.ipynb) draws its table with `results_figure` and checks that its
config is the tiny preset's as it is now: after a change of the preset, run `make demo` and this script again.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEEP = ("status", "config_hash", "preset", "seed", "data_root", "eval_rows_per_split", "table", "ablation_effect",
        "audio_probe", "per_cue_J", "self_correction", "config")


def _rounded(x):
    if isinstance(x, float): return round(x, 6)
    if isinstance(x, dict): return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list): return [_rounded(v) for v in x]
    return x


def kept(results: dict) -> dict:
    "The parts of a results.json that do not depend on the machine or the invocation."
    out = {k: _rounded(results.get(k)) for k in KEEP}
    out["steps"] = [{"step": e["step"], "status": e["status"]} for e in results["steps"]]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", default="runs/demo", help="the run folder of `make demo` (default runs/demo)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "demo_results.json"), help="the file to write")
    args = p.parse_args(argv)
    res = json.loads((Path(args.run) / "results.json").read_text())
    if res["status"] != "ok":
        print(f"{args.run}: the run's status is {res['status']!r}; finish it (run `make demo` again) first", file=sys.stderr)
        return 1
    Path(args.out).write_text(json.dumps(kept(res), indent=1) + "\n")
    print(f"wrote {args.out}: {len(res['table'])} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
