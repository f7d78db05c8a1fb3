"""The project cites only itself: no pointer to documents outside the repository, and every link into the
references chapter names a section that exists."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["nbs", "aurora_nb", "README.md", "settings.ini", "tools"]  # what users get; tests/ is not scanned
SUFFIXES = {".ipynb", ".py", ".md", ".ini", ".yml", ".yaml", ".txt", ".css", ".cfg", ""}

# Pointers to documents a user of the package does not have, each with what to write instead.
OUTSIDE = [
    (re.compile(r"\b(DESIGN|METHOD|REFAVS|STACK|TINY|STYLE)\.md\b", re.I), "names a design document outside the repository"),
    (re.compile(r"(?<![\w.-])(\.\./)*shared/|/work/"), "points into a folder outside the repository"),
    (re.compile(r"\bREFAVS\b"), "cites the Ref-AVS notes; link references.ipynb#ref-avs-layout or #evaluation-protocol"),
    (re.compile(r"method\W{0,3}reference|stack\W{0,3}notes?|\bTINY\W{0,3}reference", re.I), "cites an outside reference document"),
    (re.compile(r"(reference|notes|\.md|method|stack|design|refavs|tiny)\**\W{0,3}§", re.I), "a § pointer into an outside document"),
]
DEFECT = re.compile(r"\bdefects?\s+D\d{1,2}\b", re.I)
DEFECT_OK = re.compile(r"references\.(ipynb|html)#official-code-defects|references chapter", re.I)
REF_LINK = re.compile(r"references\.(?:ipynb|html)#([A-Za-z0-9_-]+)")
SECTION_NAME = re.compile(r"references chapter, section ['\"]([^'\"]+)['\"]")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*\{#([A-Za-z0-9_-]+)\}\s*$", re.M)


def scanned_files(root: Path):
    "Every text file under the scanned paths of `root`."
    for name in SCANNED:
        p = root / name
        paths = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else []
        for q in paths:
            if q.suffix in SUFFIXES and "__pycache__" not in q.parts and ".ipynb_checkpoints" not in q.parts:
                yield q


def outside_references(root: Path) -> list[str]:
    "One `file:line: what` entry per pointer to a document outside the repository."
    found = []
    for path in scanned_files(root):
        rel = path.relative_to(root)
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if len(line) > 2000: continue  # base64 images in stored outputs
            for rx, what in OUTSIDE:  # one entry per line: the first kind that matches
                if m := rx.search(line):
                    found.append(f"{rel}:{n}: {what}: ...{line[max(0, m.start() - 40):m.end() + 40].strip()}..."); break
            if (m := DEFECT.search(line)) and not DEFECT_OK.search(line) and rel.name != "references.ipynb":
                found.append(f"{rel}:{n}: '{m.group()}' without a link to references.ipynb#official-code-defects")
    return found


def reference_sections(root: Path) -> dict[str, str]:
    "Anchor -> title of every `## Title {#anchor}` heading of the references chapter."
    nb = json.loads((root / "nbs" / "references.ipynb").read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return {a: t for t, a in HEADING.findall(text)}


def dead_reference_links(root: Path) -> list[str]:
    "One entry per link `references.ipynb#X` or plain-text `section 'X'` that names no section of the chapter."
    sections = reference_sections(root)
    titles = {t.lower() for t in sections.values()}
    found = []
    for path in scanned_files(root):
        rel = path.relative_to(root)
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            found += [f"{rel}:{n}: no anchor #{a} in the references chapter" for a in REF_LINK.findall(line) if a not in sections]
            found += [f"{rel}:{n}: no section '{s}' in the references chapter" for s in SECTION_NAME.findall(line) if s.lower() not in titles]
    return found


def test_references_chapter_has_the_agreed_sections():
    sections = reference_sections(ROOT)
    for a in ["constants", "official-code-defects", "ref-avs-layout", "evaluation-protocol", "tiny-scale", "software-stack",
              "related-work", "bibliography"]:
        assert a in sections, f"nbs/references.ipynb has no heading with {{#{a}}}"


def test_defects_are_numbered_in_the_chapter():
    nb = json.loads((ROOT / "nbs" / "references.ipynb").read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    for k in range(1, 20):
        assert re.search(rf"^\| D{k} \|", text, re.M), f"defect D{k} is not a row of the defects table"


def test_no_reference_to_documents_outside_the_repository():
    found = outside_references(ROOT)
    assert not found, "references to documents users do not have:\n" + "\n".join(found)


def test_every_link_into_the_references_chapter_resolves():
    found = dead_reference_links(ROOT)
    assert not found, "\n".join(found)


@pytest.fixture
def doctored(tmp_path):
    "A tiny tree in the repository's shape, with the real references chapter."
    (tmp_path / "nbs").mkdir()
    (tmp_path / "nbs" / "references.ipynb").write_text((ROOT / "nbs" / "references.ipynb").read_text())
    (tmp_path / "aurora_nb").mkdir()
    return tmp_path


@pytest.mark.parametrize("text", [
    "as METHOD.md §3 says", "see DESIGN.md §8", "(REFAVS §6.3)", "the method reference §2.1", "stack notes §7",
    "point 6 of the TINY reference", "(*TINY* reference)", "see ../shared/reference/STACK.md", "this is defect D2.",
])
def test_the_scan_catches_each_kind_of_outside_reference(doctored, text):
    (doctored / "aurora_nb" / "m.py").write_text(f'"ok"\n# {text}\n')
    found = outside_references(doctored)
    assert found and found[0].startswith("aurora_nb/m.py:2:"), found


@pytest.mark.parametrize("text", [
    "[protocol](references.ipynb#evaluation-protocol)", "this is [defect D2](references.ipynb#official-code-defects)",
    "see the references chapter, section 'Constants'", "make_synthetic_refavs(root)", "data/refavs", "shared by every stage",
])
def test_the_scan_accepts_our_own_references(doctored, text):
    (doctored / "aurora_nb" / "m.py").write_text(f"# {text}\n")
    assert outside_references(doctored) == [] and dead_reference_links(doctored) == []


def test_a_dead_anchor_or_section_name_is_reported(doctored):
    (doctored / "aurora_nb" / "m.py").write_text("# [x](references.ipynb#no-such-part)\n# see the references chapter, section 'Nowhere'\n")
    found = dead_reference_links(doctored)
    assert len(found) == 2 and "#no-such-part" in found[0] and "'Nowhere'" in found[1], found
