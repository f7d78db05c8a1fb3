"""Build the documentation site offline, without Quarto: `make docs`.

Usage: python tools/build_docs.py [_docs]

1. nbdev processes the notebooks into _proc/ (as `nbdev_docs` does before Quarto), with the renderer and the
   processors that settings.ini names (aurora_nb.docs).
2. smalldocs renders _proc/ into _docs/, honouring each notebook's `output-file`, so pages get the names nbdev's
   index links to (`00_config.ipynb` -> `config.html`), as Quarto names them.
3. The pages are finished as Quarto would: maths becomes MathML (Quarto: `html-math-method: mathml`), so no
   script or CDN is needed, and links to the published site (https://<doc_host><doc_baseurl>/x.html#a) become
   relative links to the same page here, so the offline site is whole.
Then run tools/check_docs.py on the result.
"""
import html as html_lib
import posixpath
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_MATH = re.compile(r'<span class="math (inline|display)">\\[(\[](.*?)\\[)\]]</span>', re.S)
_KATEX = re.compile(r'<link[^>]*katex[^>]*>|<script[^>]*katex[^>]*></script>')
# MathML Core (what browsers render) ignores mathvariant on <mi>, except "normal": use the Unicode letters instead.
_VARIANTS = {"script": (0x1D49C, {"B": "ℬ", "E": "ℰ", "F": "ℱ", "H": "ℋ", "I": "ℐ", "L": "ℒ", "M": "ℳ", "R": "ℛ",
                                  "e": "ℯ", "g": "ℊ", "o": "ℴ"}),
             "double-struck": (0x1D538, {"C": "ℂ", "H": "ℍ", "N": "ℕ", "P": "ℙ", "Q": "ℚ", "R": "ℝ", "Z": "ℤ"}),
             "fraktur": (0x1D504, {"C": "ℭ", "H": "ℌ", "I": "ℑ", "R": "ℜ", "Z": "ℨ"}),
             "bold": (0x1D400, {})}
_MI_VARIANT = re.compile(r'<mi mathvariant="(script|double-struck|fraktur|bold)">([A-Za-z])</mi>')


def _styled(m) -> str:
    "One <mi> with a mathvariant, written with the Unicode mathematical letter instead."
    variant, ch = m.group(1), m.group(2)
    start, holes = _VARIANTS[variant]
    if ch in holes: return f"<mi>{holes[ch]}</mi>"
    off = ord(ch) - ord("A") if ch.isupper() else 26 + ord(ch) - ord("a")
    return f"<mi>{chr(start + off)}</mi>"


def tex_to_mathml(tex: str, display: bool) -> str:
    "MathML for the LaTeX `tex` (inline, or a block when `display`); raises ValueError naming the formula."
    from latex2mathml.converter import convert
    tex = re.sub(r"\\\\\[[^\]]*\]", r"\\\\", tex)  # a row break with extra space (`\\[2ex]`): a plain row break
    try: out = convert(tex, display="block" if display else "inline")
    except Exception as e: raise ValueError(f"cannot convert the maths {tex!r}: {e}") from e
    return _MI_VARIANT.sub(_styled, out)


def mathml_page(text: str) -> str:
    "A page with its `\\(...\\)` / `\\[...\\]` maths as MathML and without the KaTeX (CDN) tags."
    def one(m):
        kind, tex = m.group(1), html_lib.unescape(m.group(2))
        return f'<span class="math {kind}">{tex_to_mathml(tex.strip(), kind == "display")}</span>'
    return _KATEX.sub("", _MATH.sub(one, text))


def local_doc_links(text: str, page: str, site_url: str) -> str:
    "Links to the published site (`site_url`/x.html#a) as links relative to `page` (a path inside the site)."
    base = site_url.rstrip("/") + "/"
    def one(m):
        target = m.group(2)[len(base):] or "index.html"
        path, _, anchor = target.partition("#")
        rel = posixpath.relpath(path or "index.html", posixpath.dirname(page) or ".")
        return f'{m.group(1)}="{rel}{"#" + anchor if anchor else ""}"'
    return re.sub(r'(href)="(' + re.escape(base) + r'[^"]*)"', one, text)


def _honour_output_file():
    "Make smalldocs name each page after its `output-file` front matter (nbdev sets it), as Quarto does."
    from smalldocs import site as sd_site
    if getattr(sd_site.Site.read, "_output_file", False): return
    check_page, read = sd_site.check_page, sd_site.Site.read
    sd_site.check_page = lambda meta, where: check_page({k: v for k, v in meta.items() if k != "output-file"}, where)
    def read_named(self, src):
        page = read(self, src)
        name = page.front.get("output-file")
        if name: page.out = src.parent / str(name)
        return page
    read_named._output_file = True
    sd_site.Site.read = read_named


def proc_notebooks():
    "nbdev's notebook processing into _proc/, as `nbdev_docs` runs it, without asking for Quarto."
    import nbdev.quarto as q
    q._ensure_quarto = lambda: None  # smalldocs renders instead of Quarto
    q.nbdev_proc_nbs.__wrapped__()


def render(proc: Path, out: Path) -> list[str]:  # the warnings smalldocs gives
    "Render the processed notebooks `proc` into the site folder `out` with smalldocs."
    from smalldocs import site as sd_site
    _honour_output_file()
    site = sd_site.build(proc, quiet=True)
    if out.exists(): shutil.rmtree(out)
    shutil.move(str(site.out), out)
    return site.warnings


def finish(out: Path, site_url: str) -> int:  # the number of pages changed
    "Maths to MathML and published-site links to local ones, in every page of `out`."
    n = 0
    for page in sorted(out.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        new = local_doc_links(mathml_page(text), page.relative_to(out).as_posix(), site_url)
        if new != text: page.write_text(new, encoding="utf-8"); n += 1
    return n


def main(argv):
    import os
    from nbdev.config import get_config
    out = Path(argv[0] if argv else "_docs").resolve()
    os.chdir(ROOT)
    cfg = get_config()
    shutil.rmtree(ROOT / "_proc", ignore_errors=True)
    proc_notebooks()
    # smalldocs does not read `html-math-method`; `finish` below makes the MathML that Quarto makes from it
    warnings = [w for w in render(ROOT / "_proc", out) if w != "format.html.html-math-method is ignored"]
    for w in warnings: print(f"warning: {w}")
    n = finish(out, cfg.doc_host + cfg.doc_baseurl)
    pages = len(list(out.rglob("*.html")))
    print(f"build-docs: {pages} pages in {os.path.relpath(out)}/ ({n} finished: maths as MathML, local links)")
    return 1 if warnings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
