"""Write README.md from nbs/index.ipynb (the landing page is the single source of both).

Usage: python tools/make_readme.py [--check]
--check exits 1 when README.md differs from what the notebook gives, without writing.
nbdev_readme needs Quarto, which cannot be installed everywhere; the landing page is plain markdown, so the
markdown cells are enough: hidden cells are skipped and links to notebooks point into nbs/.
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- generated from nbs/index.ipynb by `make readme`; edit the notebook, not this file -->\n\n"


def readme_text(nb_path: Path = ROOT / "nbs" / "index.ipynb") -> str:
    "The README text for the landing-page notebook `nb_path`."
    cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
    parts = []
    for c in cells:
        src = "".join(c["source"]).strip()
        if not src or src.startswith("#| hide") or src.startswith("#|hide"): continue
        if c["cell_type"] == "markdown": parts.append(src)
        elif c["cell_type"] == "code": parts.append(f"```python\n{src}\n```")
    text = "\n\n".join(parts) + "\n"
    return HEADER + re.sub(r"\]\((?!https?://)([\w./-]+)\.ipynb(#[\w-]+)?\)", r"](nbs/\1.ipynb\2)", text)


def main(argv):
    want, readme = readme_text(), ROOT / "README.md"
    if "--check" in argv:
        if not readme.exists() or readme.read_text(encoding="utf-8") != want:
            print("README.md is out of date with nbs/index.ipynb: run `make readme` and commit it.")
            return 1
        print("check-readme: README.md matches nbs/index.ipynb")
        return 0
    readme.write_text(want, encoding="utf-8")
    print(f"wrote {readme.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
