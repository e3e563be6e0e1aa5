"""The design document the code cites (docs/design.md): every citation names one of its sections, every module,
function, file and test it names exists, and nothing cites the developers' reference outside the repository."""
from __future__ import annotations

import re
import subprocess

import pytest

from conftest import REPO

DESIGN = REPO / "docs" / "design.md"
TEXT_SUFFIXES = {".py", ".smk", ".yaml", ".yml", ".md", ".toml", ".txt", ".cfg", ".ini", ".sh", ".json"}
TEXT_NAMES = {"Snakefile", "Makefile"}
# outside the checkout (../shared/SPEC.md): a citation of it answers nothing for a reader of the repository
OUTSIDE_REFERENCE = re.compile(r"\bSPEC\b")
# "design.md §5", "design.md §1-2", "design.md §8 and §10" (and the spelled-out "section(s)" form)
CITATION = re.compile(r"design\.md\s*(?:§|sections?\s+)(\d+(?:\s*(?:-|,|and)\s*§?\d+)*)")
HEADING = re.compile(r"^## (\d+)\. \S", re.MULTILINE)


def project_text_files() -> list:
    """Every text file of the project: git's view (tracked and not ignored) where there is one, else a walk."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.splitlines()
        paths = [REPO / p for p in listed]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "results", "resources", ".snakemake", ".pytest_cache", "__pycache__"}
        paths = [p for p in REPO.rglob("*") if not skip & set(p.relative_to(REPO).parts)]
    return [p for p in paths if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES)]


def section_numbers(cited: str) -> list[int]:
    """'1-2' -> [1, 2]; '8 and §10' -> [8, 10]."""
    numbers: list[int] = []
    for part in re.split(r"\s*(?:,|and)\s*", cited.replace("§", "")):
        low, _, high = part.partition("-")
        numbers.extend(range(int(low), int(high or low) + 1))
    return numbers


def design_sections() -> set[int]:
    return {int(n) for n in HEADING.findall(DESIGN.read_text())}


def test_the_design_document_has_its_ten_sections_in_order():
    assert [int(n) for n in HEADING.findall(DESIGN.read_text())] == list(range(1, 11))


def test_section_numbers_of_a_citation():
    assert section_numbers("5") == [5]
    assert section_numbers("1-2") == [1, 2]
    assert section_numbers("8 and §10") == [8, 10]
    assert CITATION.search("the codebook (design.md §8 and §10), each").group(1) == "8 and §10"
    assert CITATION.search("see design.md section 4)").group(1) == "4"


def test_nothing_cites_the_reference_outside_the_repository():
    me = REPO / "tests" / "test_docs.py"
    found = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in project_text_files() if p != me
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if OUTSIDE_REFERENCE.search(line)]
    assert not found, "cite docs/design.md (design.md §N) instead of the reference outside the repository:\n" + \
        "\n".join(found)


def test_every_design_citation_names_a_section_that_exists():
    sections = design_sections()
    cited, missing = 0, []
    for path in project_text_files():
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in CITATION.finditer(line):
                for n in section_numbers(match.group(1)):
                    cited += 1
                    if n not in sections:
                        missing.append(f"{path.relative_to(REPO)}:{i}: §{n}")
    assert not missing, f"docs/design.md has sections {sorted(sections)}; cited but absent:\n" + "\n".join(missing)
    assert cited >= 50  # the code cites it all over: a pattern that finds nothing would pass vacuously


def _defined(source: str, name: str) -> bool:
    return re.search(rf"^(?:def|class)\s+{re.escape(name)}\b|^{re.escape(name)}\s*[:=]", source, re.MULTILINE) is not None


def _module_name_exists(dotted: str) -> bool:
    """`i2a.data.mel.MelSpec`: the longest prefix that is a module or package, and its first remaining name defined at
    its top level (read as text: no import)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = REPO / "src" / "/".join(parts[:cut])
        rest = parts[cut:]
        if base.with_suffix(".py").is_file():
            return not rest or _defined(base.with_suffix(".py").read_text(), rest[0])
        if (base / "__init__.py").is_file():
            return not rest
    return False


def test_every_module_function_file_and_test_the_design_names_exists():
    names = re.findall(r"`([^`\s]+)`", DESIGN.read_text())
    stale = []
    for name in names:
        if "::" in name:
            file, _, test = name.partition("::")
            path = REPO / file
            if not (path.is_file() and _defined(path.read_text(), test)):
                stale.append(name)
        elif name.startswith("i2a."):
            if not _module_name_exists(name):
                stale.append(name)
        elif re.fullmatch(r"(?:src|tests|workflow|config|benchmarks|docs|profiles)/[\w./-]+", name):
            if not (REPO / name).exists():
                stale.append(name)
    assert len(names) > 100
    assert not stale, "docs/design.md names what no longer exists (moved or renamed? update it):\n" + "\n".join(stale)


@pytest.mark.parametrize("name, exists", [("i2a.data.mel.MelSpec", True), ("i2a.data.mel", True),
                                          ("i2a.data.mel.no_such_function", False), ("i2a.no_such_module", False)])
def test_module_names_are_resolved_from_the_source(name, exists):
    assert _module_name_exists(name) is exists
