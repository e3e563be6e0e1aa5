"""The package's floors (src/i2a/__init__.py): every import, at the top of a module or inside a function, goes to
the module's own floor or one below it; `spec` is torch-free; `i2a generate --help` loads no torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "src" / "i2a"
FLOORS = ["infra", "spec", "data", "features", "models", "training", "sampling", "evaluation", "report", "pipeline",
          "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int | None:
    """The floor of `i2a.<floor>...`; None for the package itself (its one fact, SOURCE_CHECKOUT, is for all)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    assert parts[1] in FLOORS, f"{module} is on no floor: add its folder to FLOORS and to src/i2a/__init__.py"
    return FLOORS.index(parts[1])


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every i2a import in a file, relative ones resolved, `from i2a.x import y` also as i2a.x.y
    when y is a module."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "i2a"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "i2a":
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*child.split("."))).with_suffix(".py").is_file() or (
                    PACKAGE.parent / Path(*child.split("."))).is_dir()
                found.append((node.lineno, child if is_module else base))
    return found


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = floor(module_name(path))
        for line, target in imports(path):
            there = floor(target)
            if here is not None and there is not None and there > here:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({FLOORS[here]}) imports {target} "
                                f"({FLOORS[there]})")
    return problems


def test_no_import_runs_back_up_a_floor():
    assert upward_imports() == []


def test_the_floor_check_sees_an_import_inside_a_function(tmp_path, monkeypatch):
    """The check itself: an import of a higher floor inside a function is found."""
    fake = tmp_path / "i2a"
    (fake / "spec").mkdir(parents=True)
    (fake / "sampling").mkdir()
    (fake / "sampling" / "loop.py").write_text("")
    (fake / "spec" / "config.py").write_text("def f():\n    from i2a.sampling import loop\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert upward_imports() == ["i2a/spec/config.py:2 (spec) imports i2a.sampling.loop (sampling)"]


def test_every_package_folder_is_on_a_floor():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert folders | modules == set(FLOORS)


def _fresh_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout


def test_spec_is_torch_free():
    """The config contract and the registries load on a login node without torch (the Snakefile and `i2a plan`
    read them)."""
    modules = sorted(module_name(p) for p in (PACKAGE / "spec").glob("*.py"))
    out = _fresh_python(f"import sys\nfor m in {modules!r}: __import__(m)\n"
                        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))")
    assert out.strip() == "[]", out
    assert "i2a.spec.config" in modules and "i2a.spec.frames" in modules


@pytest.mark.parametrize("command", ["generate", "app"])
def test_help_loads_no_torch(command):
    out = _fresh_python("import sys\nfrom i2a import cli\ntry:\n"
                        f"    cli.main([{command!r}, '--help', '--config', 'config/demo.yaml'])\n"
                        "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    assert out.strip().endswith("False"), out


def test_the_tests_mirror_the_package():
    """tests/<floor>/ holds the tests of src/i2a/<floor>/ (tests/workflow/ those of the workflow as a user drives
    it); the tests of the package as a whole, the docs and the benchmarks stay at the top."""
    folders = {p.name for p in (REPO / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == packages | {"workflow"}
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), "two test files of one name: pytest imports them as one module"
