"""`--help` latency of every `aurora-nb` subcommand, each in a fresh process, one run.

`aurora_nb.cli` owns every subcommand's parser and imports handlers only after parsing, so help never loads torch,
OpenCV or librosa. This prints, per subcommand, the wall time of `aurora-nb SUBCOMMAND --help` and of a bare
`python -c pass` (the interpreter's own start-up) for scale, plus the import cost of one handler module for contrast.
It is timing evidence, not a test: times vary with the machine and its load.

    python benchmarks/bench_cli.py
"""
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

from aurora_nb.cli import SUBCOMMANDS, is_built

EXE = shutil.which("aurora-nb", path=str(Path(sys.executable).parent)) or shutil.which("aurora-nb")


def wall(cmd: list[str]) -> tuple[float, int]:
    "Seconds `cmd` takes in a fresh process, and its exit code."
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - t0, r.returncode


def main():
    assert EXE, "the aurora-nb console script is not installed (run `make install`)"
    rows = [["python -c pass (interpreter start-up)", *wall([sys.executable, "-c", "pass"])]]
    for name in ["", *SUBCOMMANDS]:
        dt, rc = wall([EXE, *([name] if name else []), "--help"])
        rows.append([f"aurora-nb {name} --help".replace("  ", " "), dt, rc])
    for module in ["aurora_nb.synth", "aurora_nb.data"]:  # what help used to pay before the parsers moved
        rows.append([f"python -c 'import {module}' (for contrast)", *wall([sys.executable, "-c", f"import {module}"])])
    print(tabulate([[c, f"{t:.2f}", rc] for c, t, rc in rows], headers=["command", "seconds", "exit code"]))
    helps = [t for c, t, _ in rows if c.startswith("aurora-nb")]
    print(f"\nslowest --help: {max(helps):.2f} s (target < 1 s); built subcommands: "
          f"{', '.join(n for n in SUBCOMMANDS if is_built(n))}")


if __name__ == "__main__":
    main()
