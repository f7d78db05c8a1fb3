"""The project's own guard rails: export drift, stale stored outputs, README, idempotent install (docs: test_docs.py)."""
import json
import os
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
