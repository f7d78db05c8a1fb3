"""The project's own guard rails: export drift, stale stored outputs, README, idempotent install (docs: test_docs.py)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAMP = ROOT / ".venv" / ".aurora-installed"
sys.path.insert(0, str(ROOT / "tools"))


def _copy_project(dst: Path) -> Path:
    "A copy of what the export check needs (notebooks, package, settings), sharing the installed .venv."
    for name in ["nbs", "aurora_nb", "tools"]:
        shutil.copytree(ROOT / name, dst / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ["settings.ini", "setup.py", "pyproject.toml", "Makefile", "README.md", "nbval.cfg"]:
        shutil.copy2(ROOT / name, dst / name)
    (dst / ".venv").symlink_to(ROOT / ".venv")
    return dst


def _make(target, cwd):
    # -o: never reinstall from inside a test; the copy shares the real .venv
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.aurora-installed", target], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not STAMP.exists(), reason="needs the .venv made by `make install`")
def test_export_check_catches_a_notebook_changed_without_export(tmp_path):
    proj = _copy_project(tmp_path)
    r = _make("check-export", proj)
    assert r.returncode == 0, r.stdout + r.stderr
    nb_path = proj / "nbs" / "00_config.ipynb"
    nb = json.loads(nb_path.read_text())
    cell = next(c for c in nb["cells"] if "".join(c["source"]).startswith("#| export\nclass ConfigError"))
    cell["source"] = "".join(cell["source"]).replace("A configuration key", "A changed configuration key")
    nb_path.write_text(json.dumps(nb, indent=1))
    r = _make("check-export", proj)
    assert r.returncode != 0 and "stale" in r.stdout, r.stdout + r.stderr


def test_nbval_catches_a_changed_stored_output(tmp_path):
    nb = json.loads((ROOT / "nbs" / "00_config.ipynb").read_text())
    cell = next(c for c in nb["cells"] if c.get("id") == "c0demo1")
    assert cell["outputs"], "the demo cell should have a stored output"
    cell["outputs"][0]["data"]["text/plain"] = ["(0.0001, 1e-05, 3, 8, 32)"]  # alpha changed from 16
    (tmp_path / "settings.ini").write_text("[DEFAULT]\n")  # a checkout-like folder, as the notebook expects
    (tmp_path / "data").symlink_to(ROOT / "data")
    (tmp_path / "nbs").mkdir()
    nb_path = tmp_path / "nbs" / "00_config.ipynb"
    nb_path.write_text(json.dumps(nb, indent=1))
    r = subprocess.run([str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
                        "--nbval-sanitize-with", str(ROOT / "nbval.cfg"), str(nb_path)],
                       capture_output=True, text=True, cwd=tmp_path / "nbs", timeout=300)
    assert r.returncode == 1 and "1 failed" in r.stdout, r.stdout[-2000:]


def test_readme_is_generated_from_the_landing_page(tmp_path):
    import make_readme
    text = make_readme.readme_text()
    assert text.startswith(make_readme.HEADER) and "make demo" in text and "make test" in text
    assert (ROOT / "README.md").read_text() == text, "README.md is stale: run `make readme`"
    assert "](nbs/00_config.ipynb)" in text


def test_readme_names_exactly_the_two_newcomer_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert [l.split()[0:2] for l in block.strip().splitlines()] == [["make", "demo"], ["make", "test"]]


def test_ci_script_calls_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make install" in ci


@pytest.mark.skipif(not STAMP.exists(), reason="needs the .venv made by `make install`")
def test_install_is_idempotent():
    r = subprocess.run(["make", "-q", ".venv/.aurora-installed"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, "make install would run again although nothing changed"


def test_modules_import_only_chapters_read_before_them():
    "The house has one direction: a module imports only modules whose notebooks come earlier in reading order."
    import re
    pkg = ROOT / "aurora_nb"
    order = {}
    for f in pkg.glob("*.py"):
        m = re.search(r"File to edit: \.\./nbs/(\S+)\.ipynb", f.read_text())
        if m: order[f.stem] = m.group(1)
    assert {"config", "model", "sft", "grpo"} <= set(order)
    bad = []
    for mod, nb in order.items():
        for dep in set(re.findall(r"^\s*from (?:aurora_nb)?\.(\w+) import", (pkg / f"{mod}.py").read_text(), re.M)):
            if dep in order and order[dep] >= nb: bad.append(f"{mod} ({nb}) imports {dep} ({order[dep]})")
    assert not bad, "imports against the reading order:\n" + "\n".join(bad)


MAX_CELL_LINES = 40  # one idea per cell: an exported cell longer than this says why in a `# long cell: ` line
_EXPORTED = re.compile(r"^\s*#\s*\|\s*export[si]?(?:\s|$)", re.M)  # `#| export`, `#| exports`, `#| exporti`


def long_exported_cells(nbs: Path = ROOT / "nbs", limit: int = MAX_CELL_LINES) -> list[str]:
    "`notebook cell-id: N lines` for each exported cell over `limit` lines without a `# long cell: <why>` line."
    found = []
    for nb_path in sorted(nbs.glob("*.ipynb")):
        for i, c in enumerate(json.loads(nb_path.read_text(encoding="utf-8"))["cells"]):
            src = "".join(c["source"])
            if c["cell_type"] != "code" or not _EXPORTED.search(src): continue
            lines = src.splitlines()
            why = any(l.startswith("# long cell: ") and l[len("# long cell: "):].strip() for l in lines)
            if len(lines) > limit and not why: found.append(f"{nb_path.name} {c.get('id', i)}: {len(lines)} lines")
    return found


def test_no_exported_cell_is_a_wall(tmp_path):
    "One idea per cell: split an exported cell over 40 lines (`@patch`, one method per cell), or say why it is long."
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "id": c, "source": s, "outputs": [], "execution_count": None}
                    for c, s in [("long", "#| export\n" + "x = 1\n" * 40), ("why", "#| exports\n# long cell: one table\n" + "x = 1\n" * 40),
                                 ("fine", "#| exporti\n" + "x = 1\n" * 39), ("demo", "x = 1\n" * 80)]],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "00_x.ipynb").write_text(json.dumps(nb))
    assert long_exported_cells(tmp_path) == ["00_x.ipynb long: 41 lines"]  # the rule itself, on cells made for it
    walls = long_exported_cells()
    assert not walls, f"{len(walls)} exported cell(s) over {MAX_CELL_LINES} lines:\n" + "\n".join(walls)


def test_the_landing_page_cites_the_paper_and_lists_every_chapter_in_reading_order():
    text = (ROOT / "README.md").read_text()
    paper = text.split("## The paper", 1)[1].split("\n## ", 1)[0]
    assert "Ziyang Luo, Nian Liu, Fahad Shahbaz Khan and Junwei Han" in paper and "AAAI 2026" in paper
    assert "arXiv:2508.02149" in paper and "reconstructed from the paper's abstract and its released code" in paper
    table = text.split("## What is built", 1)[1].split("\n## ", 1)[0]
    linked = re.findall(r"^\| \[[^\]]+\]\(nbs/([\w-]+)\.ipynb\)", table, re.M)
    chapters = sorted(p.stem for p in (ROOT / "nbs").glob("*.ipynb") if p.stem != "index")  # file names are reading order
    assert linked == chapters, f"the chapter table should list every chapter once, in reading order:\n{linked}\n{chapters}"


def test_nbval_skips_what_nbdev_test_skips_and_run_slow_runs_the_slow_cells(tmp_path):
    "`make test` runs notebooks under nbval only; tests/conftest.py makes it skip the cells nbdev_test skips."
    def cell(src, out=None):
        return {"cell_type": "code", "metadata": {}, "execution_count": 1 if out else None, "source": src,
                "outputs": [{"output_type": "stream", "name": "stdout", "text": out}] if out else []}
    nb = {"cells": [cell("x = 1\nprint(x)", "1\n"),
                    cell("#| slow\nraise RuntimeError('the slow cell ran')"),
                    cell("#| notest\nraise RuntimeError('the notest cell ran')"),
                    cell("#| eval: false\nraise RuntimeError('the eval: false cell ran')"),
                    cell("#| hide\nprint(x + 1)", "2\n")],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 4}
    (tmp_path / "00_x.ipynb").write_text(json.dumps(nb))
    run = lambda *a, **env: subprocess.run(
        [str(BIN / "pytest"), "-q", "-rs", "-p", "no:cacheprovider", "-p", "conftest", "--nbval", "--nbval-current-env", *a,
         str(tmp_path / "00_x.ipynb")], capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests"), "AURORA_NB_RUN_SLOW": "", **env})
    r = run()
    assert r.returncode == 0 and "2 passed, 3 skipped" in r.stdout and "#| slow cell" in r.stdout, r.stdout[-3000:]
    for r in (run("--run-slow"), run(AURORA_NB_RUN_SLOW="1")):  # make test-all
        assert r.returncode == 1 and "the slow cell ran" in r.stdout and "1 failed, 2 passed, 2 skipped" in r.stdout, r.stdout[-3000:]


def test_shared_runs_are_made_once_and_a_failed_one_is_not_repeated(tmp_path):
    "tests/conftest.py's shared runs: the first test that asks makes the run, the others reuse it or its first error."
    from conftest import SharedRuns
    runs, calls = SharedRuns(tmp_path / "shared"), []
    def make(d): calls.append(d); (d / "out.txt").write_text("made")
    assert runs.get("a", make) == runs.get("a", make) == tmp_path / "shared" / "a" and len(calls) == 1
    assert (SharedRuns(tmp_path / "shared").get("a", make) / "out.txt").read_text() == "made" and len(calls) == 1  # another worker
    def broken(d): calls.append(d); raise RuntimeError("the launch failed")
    with pytest.raises(RuntimeError): runs.get("b", broken)
    with pytest.raises(pytest.fail.Exception, match="the launch failed"): runs.get("b", broken)
    assert len(calls) == 2
