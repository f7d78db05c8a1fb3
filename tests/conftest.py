"""Shared test set-up: no network, deterministic threads, the repository root as a fixture, nbdev's test flags for the
notebooks that nbval runs, and expensive runs made once per session and shared by the tests that inspect them.

Notebooks run once per `make test`, under nbval (pytest --nbval), which executes every cell and compares its stored
output. nbval knows nothing of nbdev's directives, so this file gives it what `nbdev_test` would skip: a cell whose
directives name one of settings.ini's `tst_flags` (`#| slow`, `#| notest`), a cell marked `#| eval: false`, and a
notebook whose front matter says `skip_exec: true`. `--run-slow` (or AURORA_NB_RUN_SLOW=1; `make test-all`) runs the
`slow` cells, and the tests marked `@pytest.mark.slow`, too.
"""
import os

# OMP_WAIT_POLICY: torch's OpenMP threads sleep while they wait instead of spinning, which on 2 cores shared by two
# workers, their notebook kernels and launched processes took the CPU from the working threads (the Makefile says more).
# Set before torch is imported; kernels and subprocesses inherit it.
for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_WAIT_POLICY": "PASSIVE"}.items():
    os.environ.setdefault(k, v)

import configparser
import json
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    "The repository root (holds settings.ini, nbs/, data/)."
    return ROOT


# ---------------------------------------------------------------- nbdev's test flags under nbval
def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=os.environ.get("AURORA_NB_RUN_SLOW", "") not in ("", "0"),
                     help="also run notebook cells flagged `#| slow` and tests marked slow (`make test-all`)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a heavy test that runs only with --run-slow (`make test-all`)")


def tst_flags(settings: Path = ROOT / "settings.ini") -> set[str]:
    "The flags that mark notebook cells `nbdev_test` skips unless asked (settings.ini `tst_flags`)."
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(settings)
    return set(cfg["DEFAULT"].get("tst_flags", "").split())


def cell_skip_reason(source: str, skip_flags: set[str]) -> str | None:
    "Why `nbdev_test` would not run a code cell with this `source` (None: it runs), given the flags to skip."
    from fastcore.basics import AttrDict
    from nbdev.process import extract_directives
    if "nbdev_export" + "(" in source: return "calls nbdev_export"
    directives = extract_directives(AttrDict(source=source), remove=False)  # nbdev's own parsing: `#| slow` -> {"slow": []}
    if (directives.get("eval:") or [""])[0].lower() == "false": return "#| eval: false"
    flags = sorted(skip_flags & set(directives))
    if flags: return f"#| {flags[0]} cell: runs with --run-slow / make test-all" if flags[0] == "slow" else f"#| {flags[0]} cell"
    return None


def notebook_skips_execution(nb) -> bool:
    "Whether the notebook's front matter (a first raw cell) says `skip_exec: true`, as nbdev_test reads it."
    raw = next((c for c in nb.cells if c.cell_type != "markdown"), None)
    if raw is None or raw.cell_type != "raw": return False
    return any(l.split(":", 1)[0].strip() == "skip_exec" and l.split(":", 1)[1].strip().lower() in ("true", "yes", "1")
               for l in raw.source.splitlines() if ":" in l)


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow")
    skip_flags = tst_flags() - ({"slow"} if run_slow else set())
    for item in items:
        if type(item).__name__ == "IPyNbCell":  # one notebook cell under nbval
            why = ("skip_exec: true in the notebook's front matter" if notebook_skips_execution(item.parent.nb)
                   else cell_skip_reason(item.cell.source, skip_flags))
            if why: item.add_marker(pytest.mark.skip(reason=why))
        elif "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: runs with --run-slow / make test-all"))


# ---------------------------------------------------------------- runs shared by several tests
class SharedRuns:
    """Expensive runs made once per test session, in a folder every pytest-xdist worker of the session sees.

    `get(name, make)` returns the folder `name`, calling `make(folder)` first if no worker has made it yet. A file lock
    makes the other workers that ask for the same run wait for it instead of repeating it; a run whose `make` failed is
    not tried again: every test that asks for it fails at once with the first error. Tests must only read the folder
    (write into their own tmp_path)."""
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, make: Callable[[Path], object], timeout: float = 3600) -> Path:
        from filelock import FileLock
        d, failed = self.root / name, self.root / f"{name}.failed"
        with FileLock(str(self.root / f"{name}.lock"), timeout=timeout):
            if failed.exists(): pytest.fail(f"shared run {name!r} failed earlier in this session:\n{failed.read_text()}")
            if not (d / ".done").exists():
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir(parents=True)
                try: make(d)
                except Exception:
                    failed.write_text(traceback.format_exc()[-6000:])
                    raise
                (d / ".done").touch()
        return d


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory) -> SharedRuns:
    "The session's shared runs, under the pytest temp folder that all xdist workers of this session have in common."
    base = tmp_path_factory.getbasetemp()  # under xdist: <session temp>/popen-gwN, one per worker
    return SharedRuns((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-runs")


def _run(cmd: list, out: Path, timeout: float = 900, **env) -> subprocess.CompletedProcess:
    "Run `cmd` from the repository root with no visible GPU, keep its stdout/stderr in `out`, fail naming its tail."
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **env})
    (out / "stdout.txt").write_text(r.stdout)
    (out / "stderr.txt").write_text(r.stderr)
    if r.returncode != 0: raise RuntimeError(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r


@pytest.fixture(scope="session")
def tiny_model_dir(shared_runs) -> Path:
    """A random tiny model (seed 0, the tiny preset), made once per session: DIR/model is its `save_pretrained` folder
    (DIR is laid out as a stage-2 run folder, for `--init`), DIR/hf its thinker and tokenizer as a Hugging Face folder."""
    def make(d: Path):
        import torch
        from aurora_nb.config import get_config
        from aurora_nb.model import build_model
        torch.manual_seed(0)
        m = build_model(get_config("tiny"))
        m.save_pretrained(d / "model")
        m.thinker.save_pretrained(d / "hf"); m.tokenizer.save_pretrained(d / "hf")
    return shared_runs.get("tiny-model", make)


# The short trainings of the "two processes train like one" checks, each run once per session with one thread per
# process (as torchrun gives each of its processes). Stage 0 through the console script, as a user launches it
# (`accelerate launch --no_python aurora-nb train`): three steps with the same global batch of 4 (one process x 4, two
# gloo processes x 2). GRPO through tests/scale_run.py (its sampling is seeded by prompt, so both runs draw the same
# rollouts): two steps from `tiny_model_dir` (one process x 2 prompts, two x 1).
SFT_SHORT = ["stages.teacher.max_steps=3", "stages.teacher.warmup_steps=0", "stages.teacher.save_steps=3",
             "stages.teacher.logging_steps=100", "stages.teacher.grad_accum=1"]
GRPO_SHORT = ["model.trainable=lora", "model.lora.dropout=0.0", "stages.grpo.max_steps=2", "stages.grpo.save_steps=2",
              "stages.grpo.warmup_steps=0", "stages.grpo.max_new_tokens=8", "stages.grpo.lr=1e-2", "stages.grpo.grad_accum=1"]


def _launch(args: list, out: Path, procs: int, port: int, python: bool = True) -> subprocess.CompletedProcess:
    "ARGS in one plain process, or in `procs` gloo processes under `accelerate launch` (no visible GPU), one thread each."
    if procs == 1: return _run([sys.executable, *args] if python else args, out, OMP_NUM_THREADS="1")
    # `--cpu` alone makes accelerate start ONE process (it expects mpirun for more); the torchrun launcher with no
    # visible GPU starts `procs` CPU processes that talk over gloo
    return _run([BIN / "accelerate", "launch", "--multi_gpu", "--num_processes", procs, "--num_machines", 1,
                 "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
                 *([] if python else ["--no_python"]), *args], out, OMP_NUM_THREADS="1")


@pytest.fixture(scope="session")
def sft_runs(shared_runs) -> dict[str, Path]:
    """Stage 0 trained for three steps by `aurora-nb train` in one process (batch 4) and in two gloo processes (batch 2
    each): {"one": RUN, "two": RUN}, each the `--out` folder (model/, checkpoint-3/, config.yaml, log_history.json) plus
    weights.pt, the trained model's trainable weights; what its launcher printed is in RUN.parent / "stdout.txt"."""
    def make(batch, procs, port):
        def run(d: Path):
            _launch([BIN / "aurora-nb", "train", "--stage", "teacher", "--out", d / "run", "--no-progress", *SFT_SHORT,
                     f"stages.teacher.batch_size={batch}"], d, procs, port, python=False)
            import torch
            from aurora_nb.model import from_pretrained
            m = from_pretrained(d / "run" / "model")  # its trainable weights, as tests/scale_run.py writes them for GRPO
            torch.save({n: p.detach() for n, p in m.named_parameters() if p.requires_grad}, d / "run" / "weights.pt")
        return run
    return {"one": shared_runs.get("sft-one", make(4, 1, 0)) / "run",
            "two": shared_runs.get("sft-two", make(2, 2, 29541)) / "run"}


@pytest.fixture(scope="session")
def grpo_runs(shared_runs, tiny_model_dir) -> dict[str, Path]:
    """GRPO trained for two steps from `tiny_model_dir` by tests/scale_run.py in one process (2 prompts) and in two gloo
    processes (1 each): {"one": RUN, "two": RUN}, each with weights.pt (process 0's trainable weights), model/ and
    checkpoint-2/; the launcher's output is in RUN.parent / "stdout.txt"."""
    def make(batch, procs, port):
        args = [ROOT / "tests" / "scale_run.py", "grpo", tiny_model_dir, *GRPO_SHORT, f"stages.grpo.batch_size={batch}"]
        return lambda d: _launch([*args[:3], d / "run", *args[3:]], d, procs, port)
    return {"one": shared_runs.get("grpo-one", make(2, 1, 0)) / "run",
            "two": shared_runs.get("grpo-two", make(1, 2, 29543)) / "run"}
