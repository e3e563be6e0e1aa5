"""The README stays short, written one way, and points only at things that exist."""
import re

from conftest import REPO

README = (REPO / "README.md").read_text()
FAULTS = "## What is tested when things go wrong"


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S)


def test_the_readme_reads_in_five_minutes():
    body = README.split(FAULTS)[0]
    assert FAULTS in README
    assert len(body.splitlines()) <= 150, "design and performance notes belong in docs/"


def test_commands_are_written_one_way():
    """Commands run in the activated environment: never `.venv/bin/...` in one place and bare in another."""
    for text in [README, *(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))]:
        for block in _code_blocks(text):
            assert ".venv/bin/" not in block, block


def test_every_path_the_readme_names_exists():
    names = set(re.findall(r"`((?:docs|config|profiles|workflow|tests|benchmarks|src)/[\w./-]+?)(?:::\w+)?`", README))
    names |= set(re.findall(r"\b(docs/[\w-]+\.md)\b", README))
    assert names
    missing = [n for n in sorted(names) if not (REPO / n).exists()]
    assert not missing, missing


def test_every_make_target_the_readme_names_exists():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    named = set(re.findall(r"(?<![\w./-])make (\w[\w-]*)", README))
    assert {"demo", "test", "plan", "report"} <= named
    assert named <= targets, named - targets


def test_the_claims_for_any_machine_name_the_test_that_keeps_them():
    """The README separates one machine's demo numbers from what holds anywhere; the latter names its test."""
    found = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", README)
    assert found
    for path, name in found:
        assert re.search(rf"^def {name}\(", (REPO / path).read_text(), flags=re.M), f"{path}::{name} is gone"
