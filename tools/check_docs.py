"""Check a built documentation site: an index page and one page per notebook, each with rendered content.

Usage: python tools/check_docs.py _docs
Fails (exit 1) naming the page when a notebook has no page, a page has no prose, a notebook with code has no
rendered code block, or a notebook with stored outputs shows none of them.
"""
import html as html_lib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _plain(text: str, unescape: bool = False) -> str:
    "Text with HTML entities decoded (page side) and quote / bracket characters removed, for loose matching."
    if unescape: text = html_lib.unescape(text)
    return re.sub(r"[<>&'\"\s]+", " ", text)


def check_site(site: Path, nbs: Path = ROOT / "nbs") -> list[str]:
    "Problems found in the site folder `site` built from the notebooks in `nbs`."
    problems = []
    if not (site / "index.html").is_file(): problems.append(f"{site}/index.html: missing (the landing page)")
    for nb_path in sorted(nbs.glob("*.ipynb")):
        page = site / (nb_path.stem + ".html")
        if not page.is_file():
            problems.append(f"{page}: missing (no page for {nb_path.name})"); continue
        html = page.read_text(encoding="utf-8")
        cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
        title = next(("".join(c["source"]).split("\n")[0].lstrip("# ").strip() for c in cells
                      if c["cell_type"] == "markdown"), None)
        if title and title not in html: problems.append(f"{page}: the title {title!r} is not rendered")
        visible = [c for c in cells if c["cell_type"] == "code" and not "".join(c["source"]).lstrip().startswith(("#| hide", "#|hide"))]
        if visible and "<pre" not in html and "sourceCode" not in html:
            problems.append(f"{page}: {nb_path.name} has code cells but the page shows no code")
        outs = [o for c in visible for o in c.get("outputs", []) if o.get("output_type") in ("stream", "execute_result")]
        if outs:
            first = outs[0].get("text", "") or outs[0].get("data", {}).get("text/plain", "")
            sample = _plain("".join(first).strip().split("\n")[0])[:30].strip()
            if sample and sample not in _plain(re.sub(r"<[^>]+>", "", html), unescape=True):
                problems.append(f"{page}: stored output {sample!r} of {nb_path.name} is not rendered")
    return problems


def main(argv):
    site = Path(argv[0] if argv else "_docs")
    problems = check_site(site)
    for p in problems: print(p)
    n = len(list((ROOT / "nbs").glob("*.ipynb")))
    print(f"check-docs: {n} notebooks, {len(problems)} problem(s) in {site}/")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
