"""The documentation site: the build steps of tools/build_docs.py and the checks of tools/check_docs.py, on small
doctored pages (no full docs build)."""
import configparser
import html
import json
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
import sys
sys.path.insert(0, str(ROOT / "tools"))
import build_docs  # noqa: E402
import check_docs  # noqa: E402

MATHML = '<p>Region similarity <span class="math inline"><math display="inline"><mi>J</mi></math></span>.</p>'


def _site(tmp_path, pages: dict) -> Path:
    site = tmp_path / "site"; site.mkdir()
    for name, body in pages.items(): (site / name).write_text(f"<html><body>{body}</body></html>")
    return site


def test_a_clean_page_passes(tmp_path):
    site = _site(tmp_path, {"index.html": MATHML + '<a href="metrics.html#f-measure">F</a><a href="#top" id="top">up</a>',
                            "metrics.html": '<h2 id="f-measure">F</h2><a href="index.html">home</a><a href="https://x.org/a#b">x</a>'})
    assert check_docs.check_pages(site) == []


@pytest.mark.parametrize("tex", [r"\(J = \frac{|P\cap Y|}{|P\cup Y|}\)", r"\[S = \sqrt{x}\]", "$$F_\\beta$$"])
def test_raw_maths_fails_the_check(tmp_path, tex):
    site = _site(tmp_path, {"index.html": f"<p>The metric {tex}.</p>"})
    problems = check_docs.check_pages(site)
    assert len(problems) == 1 and "raw maths" in problems[0] and "index.html" in problems[0], problems


def test_maths_inside_code_is_not_raw_maths(tmp_path):
    site = _site(tmp_path, {"index.html": r"<pre><code>re.compile(r'\(x\)')  # $$</code></pre>"})
    assert check_docs.check_pages(site) == []


def test_a_dead_local_link_fails_the_check(tmp_path):
    site = _site(tmp_path, {"index.html": '<a href="00_config.html#dataconfig">DataConfig</a>'})
    problems = check_docs.check_pages(site)
    assert len(problems) == 1 and "dead link '00_config.html#dataconfig'" in problems[0], problems


def test_a_missing_anchor_fails_the_check(tmp_path):
    site = _site(tmp_path, {"index.html": '<a href="references.html#constants">constants</a><a href="#nowhere">x</a>',
                            "references.html": '<h2 id="bibliography">Bibliography</h2>'})
    problems = check_docs.check_pages(site)
    assert len(problems) == 2, problems
    assert any("no anchor #constants in references.html" in p for p in problems)
    assert any("no anchor #nowhere in index.html" in p for p in problems)


def test_pages_are_named_as_nbdev_names_them(tmp_path):
    assert check_docs.page_name(ROOT / "nbs" / "00_config.ipynb") == "config.html"
    assert check_docs.page_name(ROOT / "nbs" / "14_cli.ipynb") == "cli.html"
    assert check_docs.page_name(ROOT / "nbs" / "index.ipynb") == "index.html"
    nb = {"cells": [{"cell_type": "raw", "metadata": {}, "source": ["---\n", "output-file: own.html\n", "---"]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "05_x.ipynb").write_text(json.dumps(nb))
    assert check_docs.page_name(tmp_path / "05_x.ipynb") == "own.html"


def test_the_metrics_equations_become_mathml():
    page = ('<head><link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/katex@0.16.11/dist/katex.min.css">'
            '<script src="https://cdn.jsdelivr.net/npm/katex@0.16.11/dist/katex.min.js" defer></script></head>'
            r'<p><span class="math display">\[\mathcal J = \frac{|P_i \cap Y_i|}{|P_i \cup Y_i| + \varepsilon},'
            r'\quad S = \sqrt{\frac{\sum_{i} [\sigma(x_i) &gt; 0.5]}{N}}\]</span> and '
            r'<span class="math inline">\(\max_k F_k\)</span>, <span class="math inline">\(\mathbb{R}^{256}\)</span></p>')
    out = build_docs.mathml_page(page)
    assert "katex" not in out and "\\[" not in out and "\\(" not in out
    assert out.count("<math") == 3 and 'display="block"' in out
    text = html.unescape(out)
    assert "<mi>𝒥</mi>" in text and "<mi>ℝ</mi>" in text  # MathML Core ignores mathvariant: Unicode letters instead
    assert 'mathvariant="script"' not in out


def test_published_site_links_become_local():
    page = ('<a href="https://aurora-nb.github.io/aurora_nb/config.html#dataconfig">DataConfig</a>'
            '<a href="https://github.com/aurora-nb/aurora_nb/blob/main/aurora_nb/config.py#L10">source</a>')
    out = build_docs.local_doc_links(page, "model.html", "https://aurora-nb.github.io/aurora_nb")
    assert 'href="config.html#dataconfig"' in out and "github.com/aurora-nb/aurora_nb/blob" in out
    assert 'href="../config.html"' in build_docs.local_doc_links(
        '<a href="https://aurora-nb.github.io/aurora_nb/config.html">c</a>', "sub/p.html", "https://aurora-nb.github.io/aurora_nb")


def test_smalldocs_names_pages_after_output_file(tmp_path, capsys):
    proc = tmp_path / "proc"; proc.mkdir()
    (proc / "_quarto.yml").write_text("project:\n  type: website\nwebsite:\n  title: t\n")
    nb = lambda body: {"cells": [{"cell_type": "raw", "metadata": {}, "source": f"---\noutput-file: {body}\n---"},
                                 {"cell_type": "markdown", "metadata": {}, "source": "# A\n\nsee [B](01_b.ipynb#there)"},
                                 {"cell_type": "markdown", "metadata": {}, "source": "## There"}],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (proc / "00_a.ipynb").write_text(json.dumps(nb("a.html")))
    (proc / "01_b.ipynb").write_text(json.dumps(nb("b.html")))
    out = tmp_path / "site"
    warns = build_docs.render(proc, out)
    assert sorted(p.name for p in out.glob("*.html")) == ["a.html", "b.html"], warns
    assert 'href="b.html#there"' in (out / "a.html").read_text()
    assert not [w for w in warns if "output-file" in w], warns
    assert check_docs.check_pages(out) == []


def test_one_owner_for_the_repository_and_the_site():
    raw = configparser.ConfigParser(interpolation=None); raw.read(ROOT / "settings.ini")
    cfg = configparser.ConfigParser(); cfg.read(ROOT / "settings.ini")
    d, r = cfg["DEFAULT"], raw["DEFAULT"]
    assert "%(user)s" in r["git_url"] and "%(user)s" in r["doc_host"] and "%(repo)s" in r["doc_baseurl"]
    assert d["git_url"] == f"https://github.com/{d['user']}/{d['repo']}"
    assert d["doc_host"] == f"https://{d['user']}.github.io"
    text = (ROOT / "settings.ini").read_text()
    assert f"github.com/{d['user']}" not in text and f"{d['user']}.github.io" not in text, "the owner is written once, in `user`"


def test_no_notebook_cell_mixes_imports_with_other_code():
    "nbdev runs import cells when it builds the docs and dumps any cell that also does other work as a warning."
    from execnb.nbio import read_nb
    from nbdev.process import NBProcessor
    from nbdev.processors import _do_eval
    found = []
    for nb_path in sorted((ROOT / "nbs").glob("*.ipynb")):
        nb = NBProcessor(nb_path).nb
        for c in nb.cells:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                _do_eval(c)
            if any("imports and other code" in str(x.message) for x in w):
                found.append(f"{nb_path.name} cell {c.get('id', c.idx_)}: {c.source.splitlines()[0]!r}")
    assert not found, "split these cells (imports in a cell of their own):\n" + "\n".join(found)


def test_docs_check_reports_missing_pages(tmp_path):
    problems = check_docs.check_site(tmp_path)
    assert any("index.html: missing" in p for p in problems)
    assert any("config.html: missing" in p for p in problems)


def test_docs_check_reports_an_output_missing_from_its_page(tmp_path):
    nbs, site = tmp_path / "nbs", tmp_path / "site"
    nbs.mkdir(); site.mkdir()
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# A chapter"]},
                    {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": ["print('x')"],
                     "outputs": [{"output_type": "stream", "name": "stdout", "text": ["{'<|AUDIO|>': 512} stored\n"]}]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (nbs / "00_a.ipynb").write_text(json.dumps(nb))
    (site / "index.html").write_text("<html></html>")
    page = "<h1>A chapter</h1><pre>print('x')</pre><pre>{&#39;&lt;|AUDIO|&gt;&#39;: 512} stored</pre>"
    (site / "a.html").write_text(page)
    assert check_docs.check_site(site, nbs) == []
    (site / "a.html").write_text(page.replace("512", "999"))
    assert any("is not rendered" in p for p in check_docs.check_site(site, nbs))


def test_the_landing_page_is_honest_and_its_diagram_fits():
    text = (ROOT / "README.md").read_text()
    assert "implements all of it" not in text
    assert "6.5–7 GB" in text and "not built yet" in text  # install size, and what is missing is named
    assert "does not yet beat" in text  # the demo's numbers are not sold as referring
    diagram = text.split("## What AURORA does", 1)[1].split("```", 2)[1]
    assert max(len(l) for l in diagram.splitlines()) <= 72, "the pipeline diagram is wider than the text column"


def test_a_widget_output_is_not_required_as_text(tmp_path):
    "A widget's text/plain is its repr (`VBox(children=…`); the page shows its static view instead."
    nbs, site = tmp_path / "nbs", tmp_path / "site"
    nbs.mkdir(); site.mkdir()
    widget = {"output_type": "execute_result", "execution_count": 1, "metadata": {},
              "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": ["VBox(children=(…"],
                       "text/html": ["<img>"]}}
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# A chapter"]},
                    {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": ["browse()"], "outputs": [widget]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (nbs / "00_a.ipynb").write_text(json.dumps(nb))
    (site / "index.html").write_text("<html></html>")
    (site / "a.html").write_text("<h1>A chapter</h1><pre>browse()</pre><img>")
    assert check_docs.check_site(site, nbs) == []


def test_class_entries_list_classmethods_and_staticmethods():
    "A backticked `Class.method` links to its own entry for plain, class and static methods alike."
    from aurora_nb.docs import _public_methods
    class A:
        def f(self): ...
        @classmethod
        def g(cls): ...
        @staticmethod
        def h(): ...
        def _hidden(self): ...
    assert _public_methods(A) == ["f", "g", "h"]


def _nb(cells) -> dict:
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _code(src, **kw) -> dict:
    return {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": src, **kw}


def _signature(name: str) -> dict:
    "The cell nbdev's docs processing writes for an exported name: its `show_doc` entry (a signature)."
    md = f"---\n\n### {name}\n\n```python\n\ndef {name}(\n    x\n):\n\n\n```\n\n*The doc.*"
    return _code(f"#| echo: false\n#| output: asis\nshow_doc({name})",
                 outputs=[{"output_type": "execute_result", "execution_count": None, "metadata": {},
                           "data": {"text/markdown": md, "text/plain": f"def {name}(x)"}}])


def test_a_chapter_must_show_the_source_of_its_method_functions(tmp_path):
    "A page that shows only the signature of `grpo_loss` (or of a patched `AuroraSFTTrainer.compute_loss`) fails."
    grpo = "def grpo_loss(x):\n    return -x.mean()  # the objective"
    patched = "@patch\ndef compute_loss(self: AuroraSFTTrainer, model, inputs):\n    return model(**inputs).loss"
    nbs = tmp_path / "nbs"; nbs.mkdir()
    (nbs / "12_grpo.ipynb").write_text(json.dumps(_nb([
        {"cell_type": "markdown", "metadata": {}, "source": "# GRPO"},
        _code("#| exports\n" + grpo), _code("#| export\n" + patched)])))
    fold = "#| code-fold: show\n#| code-summary: \"Exported source\"\n"

    def site_for(name, *cells):
        proc = tmp_path / f"proc-{name}"; proc.mkdir()
        (proc / "_quarto.yml").write_text("project:\n  type: website\nwebsite:\n  title: t\n")
        front = {"cell_type": "raw", "metadata": {}, "source": "---\noutput-file: grpo.html\ntitle: GRPO\n---"}
        (proc / "12_grpo.ipynb").write_text(json.dumps(_nb([front, *cells])))
        out = tmp_path / f"site-{name}"
        build_docs.render(proc, out)
        (out / "index.html").write_text("<html></html>")
        return out

    both = site_for("both", _signature("grpo_loss"), _code(fold + grpo),
                    _signature("AuroraSFTTrainer.compute_loss"), _code(fold + patched))
    assert check_docs.check_method_source(both, nbs) == []
    assert check_docs.check_site(both, nbs) == []
    only_sig = site_for("sig", _signature("grpo_loss"), _signature("AuroraSFTTrainer.compute_loss"), _code(fold + patched))
    problems = check_docs.check_site(only_sig, nbs)
    assert len(problems) == 1 and "grpo.html" in problems[0] and "defines grpo_loss" in problems[0], problems
    assert "`#| exports`" in problems[0]
    none = site_for("none", _signature("grpo_loss"), _code(fold + grpo), _signature("AuroraSFTTrainer.compute_loss"))
    problems = check_docs.check_method_source(none, nbs)
    assert len(problems) == 1 and "AuroraSFTTrainer.compute_loss" in problems[0], problems


def test_every_listed_method_function_is_defined_in_a_chapter(tmp_path):
    "The list of method functions follows the code: a renamed or moved name is reported, not silently skipped."
    assert check_docs.check_method_list() == []
    assert {m for m in check_docs.METHOD_FUNCTIONS} >= {"losses", "model", "cot", "reflect", "rewards", "grpo", "sft"}
    problems = check_docs.check_method_list(names={"grpo": ["grpo_loss", "no_such_objective"]})
    assert len(problems) == 1 and "no_such_objective" in problems[0], problems
