"""Check a built documentation site: an index page and one page per notebook, each with rendered content.

Usage: python tools/check_docs.py _docs
Fails (exit 1) naming the page when a notebook has no page, a page has no prose, a notebook with code has no
rendered code block, a notebook with stored outputs shows none of them, a page keeps raw LaTeX (`\\(`, `\\[`,
`$$`: maths must be MathML), a local link (`href`) points at a file or an `#anchor` that the site lacks, or a
chapter that defines one of the method functions (METHOD_FUNCTIONS below) shows only its signature, not its source.
Pages are named as nbdev names them (`00_config.ipynb` -> `config.html`, or the notebook's `output-file`).
"""
import html as html_lib
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
RAW_MATH = re.compile(r"\\\(|\\\[|\$\$")

# The code that implements the paper's equations and method steps, by module: the chapter that defines each name
# must show its source on its page (an `#| exports` cell), not only the signature that `#| export` renders.
# `Class.method` names a method, written inside the class or added with `@patch`. Update this list, and only this
# list, when one of these is renamed, split or moved.
METHOD_FUNCTIONS = {
    "losses": ["bce_per_frame", "bce_loss", "dice_per_frame", "dice_loss", "seg_distill_loss"],  # BCE, Dice, distillation
    "model": ["SegProjector", "seg_hidden_states", "decode_masks", "AuroraModel.sft_objective", "with_seg_fallback"],  # the projector, the [SEG] read-out, mask decoding and the SFT objective
    "cot": ["format_cot", "cot_answer", "parse_answer"],  # the CoT template and its parser
    "reflect": ["splice_reflective"],  # the splice: wrong path + trigger + corrected path
    "rewards": ["format_reward", "class_reward", "iou_reward"],
    "grpo": ["group_advantages", "clipped_objective", "kl_k3", "grpo_loss", "teacher_forced_group", "group_masks",
             "score_group", "group_mask_loss", "AuroraGRPOTrainer.group_step"],  # the advantages, the objective and the group step
    "sft": ["teacher_targets", "AuroraSFTTrainer.compute_loss"],  # the distillation term in the SFT loss
}


class _Page(HTMLParser):
    "The ids, the local links (href) and the text outside code and scripts of one HTML page."
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.links, self.text, self._skip = set(), [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"): self.ids.add(a["id"])
        if tag == "a" and a.get("name"): self.ids.add(a["name"])
        if tag in ("a", "link") and a.get("href") is not None: self.links.append(a["href"])
        if tag in ("code", "pre", "script", "style", "math"): self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("code", "pre", "script", "style", "math") and self._skip: self._skip -= 1

    def handle_data(self, data):
        if not self._skip: self.text.append(data)


def _parse(page: Path) -> _Page:
    p = _Page(); p.feed(page.read_text(encoding="utf-8")); return p


def page_name(nb_path: Path) -> str:
    "The page nbdev (and Quarto) writes for a notebook: its `output-file`, else the name without the number prefix."
    from nbdev.doclinks import _nbpath2html
    cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
    for c in cells[:2]:
        m = re.search(r"^output-file:\s*(\S+)", "".join(c["source"]), re.M) if c["cell_type"] == "raw" else None
        if m: return m.group(1)
    return _nbpath2html(Path(nb_path.name)).name


def check_pages(site: Path) -> list[str]:
    "Raw maths, dead local links and missing anchors in every page of the site folder `site`."
    problems, parsed = [], {}
    pages = sorted(site.rglob("*.html"))
    for page in pages: parsed[page.resolve()] = _parse(page)
    for page in pages:
        p, rel = parsed[page.resolve()], page.relative_to(site)
        m = RAW_MATH.search("".join(p.text))
        if m: problems.append(f"{site}/{rel}: raw maths {m.group(0)!r} left in the page (maths must be MathML)")
        for href in sorted(set(p.links)):
            u = urlsplit(href)
            if u.scheme or u.netloc or href.startswith(("mailto:", "javascript:", "data:")): continue
            target = (page.parent / unquote(u.path)).resolve() if u.path else page.resolve()
            if u.path.endswith("/") or target.is_dir(): target = target / "index.html"
            if not target.is_file():
                problems.append(f"{site}/{rel}: dead link {href!r} (no file {u.path})"); continue
            if u.fragment and target.suffix == ".html":
                ids = parsed.get(target) or _parse(target)
                if unquote(u.fragment) not in ids.ids:
                    problems.append(f"{site}/{rel}: link {href!r}: no anchor #{u.fragment} in {target.name}")
    return problems


def _plain(text: str, unescape: bool = False) -> str:
    "Text with HTML entities decoded (page side) and quote / bracket characters removed, for loose matching."
    if unescape: text = html_lib.unescape(text)
    return re.sub(r"[<>&'\"\s]+", " ", text)


def _defines(src: str, name: str) -> bool:
    "Whether the code `src` defines `name` (a function or class at the top level, or `Class.method`)."
    if "." not in name: return re.search(rf"^(?:async\s+)?(?:def|class)\s+{re.escape(name)}\b", src, re.M) is not None
    cls, meth = map(re.escape, name.split(".", 1))
    if re.search(rf"^(?:async\s+)?def\s+{meth}\s*\(\s*self\s*:\s*{cls}\b", src, re.M): return True  # @patch
    return (re.search(rf"^class\s+{cls}\b", src, re.M) is not None
            and re.search(rf"^\s+(?:async\s+)?def\s+{meth}\s*\(", src, re.M) is not None)


_EXPORT = re.compile(r"^\s*#\s*\|\s*export[si]?(?:\s|$)", re.M)  # `#| export`, `#| exports`, `#| exporti`
_CELL_CODE = re.compile(r'class="[^"]*\bcell-code\b[^"]*"[^>]*>(.*?)</pre>', re.S)  # a cell's source on the page


def method_definitions(nb_path: Path, names: dict = METHOD_FUNCTIONS) -> list[tuple[str, str]]:
    "The (module, name) pairs of `names` that an exported cell of the notebook `nb_path` defines."
    cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
    srcs = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    srcs = [s for s in srcs if _EXPORT.search(s)]
    return [(mod, n) for mod, ns in names.items() for n in ns if any(_defines(s, n) for s in srcs)]


def shown_sources(html: str) -> list[str]:
    "The cell sources a page shows (smalldocs and Quarto mark them `cell-code`; a `show_doc` signature is not one)."
    return [html_lib.unescape(re.sub(r"<[^>]+>", "", m)) for m in _CELL_CODE.findall(html)]


def check_method_source(site: Path, nbs: Path = ROOT / "nbs", names: dict = METHOD_FUNCTIONS) -> list[str]:
    "Pages of chapters that define a method function (`names`) but show only its signature, not its source."
    problems = []
    for nb_path in sorted(nbs.glob("*.ipynb")):
        found = method_definitions(nb_path, names)
        page = site / page_name(nb_path)
        if not found or not page.is_file(): continue
        shown = shown_sources(page.read_text(encoding="utf-8"))
        for mod, n in found:
            if not any(_defines(s, n) for s in shown):
                problems.append(f"{page}: {nb_path.name} defines {n} (aurora_nb.{mod}, a method step) but its page shows "
                                f"no source for it: make that cell `#| exports` (`#| export` renders a signature only)")
    return problems


def check_method_list(nbs: Path = ROOT / "nbs", names: dict = METHOD_FUNCTIONS) -> list[str]:
    "Names in `names` that no exported cell in `nbs` defines (renamed or moved): the list must follow the code."
    defined = {p for nb_path in sorted(nbs.glob("*.ipynb")) for p in method_definitions(nb_path, names)}
    return [f"tools/check_docs.py: METHOD_FUNCTIONS lists {n} (aurora_nb.{mod}), which no exported cell in {nbs.name}/ "
            f"defines: update the list" for mod, ns in names.items() for n in ns if (mod, n) not in defined]


def check_site(site: Path, nbs: Path = ROOT / "nbs") -> list[str]:
    "Problems found in the site folder `site` built from the notebooks in `nbs`."
    problems = []
    if not (site / "index.html").is_file(): problems.append(f"{site}/index.html: missing (the landing page)")
    for nb_path in sorted(nbs.glob("*.ipynb")):
        page = site / page_name(nb_path)
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
        outs = [o for c in visible for o in c.get("outputs", []) if o.get("output_type") in ("stream", "execute_result")
                and WIDGET_MIME not in o.get("data", {})]  # a widget's text/plain is its repr: the page shows its static view
        if outs:
            first = outs[0].get("text", "") or outs[0].get("data", {}).get("text/plain", "")
            sample = _plain("".join(first).strip().split("\n")[0])[:30].strip()
            if sample and sample not in _plain(re.sub(r"<[^>]+>", "", html), unescape=True):
                problems.append(f"{page}: stored output {sample!r} of {nb_path.name} is not rendered")
    return problems + check_method_source(site, nbs) + (check_pages(site) if site.is_dir() else [])


def main(argv):
    site = Path(argv[0] if argv else "_docs")
    problems = check_method_list() + check_site(site)
    for p in problems: print(p)
    n = len(list((ROOT / "nbs").glob("*.ipynb")))
    print(f"check-docs: {n} notebooks, {len(problems)} problem(s) in {site}/")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
