"""The layout DESIGN.md promises: one package per stage, modules of one job (≤ ~400 lines), and a box stage whose
floors are walked downwards only (the pipeline calls recipes, recipes call stages, stages call primitives)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: "A module past ~400 lines becomes a package": the bound, with the tilde's slack.
MAX_LINES = 420
#: The floors of the box stage, top to bottom: a module may import its own floor or lower ones, never higher.
BOX_FLOORS = [
    {"camloc.pipeline.boxstage", "camloc.pipeline.localizer", "camloc.pipeline.detections", "camloc.pipeline.analysis"},
    {"camloc.boxes.seed", "camloc.boxes.evidence", "camloc.boxes.multilevel"},
    {"camloc.boxes.registry", "camloc.boxes.gating"},
    {"camloc.boxes.grid", "camloc.boxes.device"},
    {"camloc.boxes.contours", "camloc.boxes.proposals", "camloc.boxes.levels", "camloc.boxes.components",
     "camloc.boxes.nms"},
]
STAGES = ["io", "models", "cam", "boxes", "evaluation", "pipeline", "runtime"]


def library_modules() -> list[Path]:
    return sorted(p for folder in ("camloc", "eval", "train", "app_pages") for p in (ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``camloc`` module ``path`` imports, at any depth of the file (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("camloc"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("camloc"))
    return found


@pytest.mark.parametrize("path", library_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_longer_than_a_module_should_be(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it along its seams"


def test_camloc_is_grouped_by_stage():
    packages = {p.name for p in (ROOT / "camloc").iterdir() if (p / "__init__.py").is_file()}
    assert set(STAGES) <= packages
    loose = sorted(p.stem for p in (ROOT / "camloc").glob("*.py") if p.stem != "__init__")
    # tools with their own `python -m`, the documented Localizer path, pictures, the registries' option check
    assert loose == ["calibration", "demo", "localize", "options", "synthetic", "viz"]
    for stage in STAGES:  # each package says what it holds
        assert ast.get_docstring(ast.parse((ROOT / "camloc" / stage / "__init__.py").read_text()))


def climbs(sources: dict[str, Path]) -> list[str]:
    """``"a imports b"`` for each module of :data:`BOX_FLOORS` (by name → its file) importing a higher floor's."""
    floor_of = {name: level for level, names in enumerate(BOX_FLOORS) for name in names}
    return [f"{name} (floor {floor_of[name]}) imports {target} (floor {floor_of[target]})"
            for name, path in sources.items() for target in sorted(imported_modules(path))
            if target in floor_of and floor_of[target] < floor_of[name]]


def test_the_box_stage_is_walked_downwards_only():
    sources = {name: ROOT / Path(*name.split(".")).with_suffix(".py") for names in BOX_FLOORS for name in names}
    assert climbs(sources) == []


def test_no_box_module_imports_the_pipeline():
    for path in (ROOT / "camloc" / "boxes").glob("*.py"):
        assert not [m for m in imported_modules(path) if m.startswith("camloc.pipeline")], path.name


def test_the_walk_rule_sees_a_climb(tmp_path):
    """The check above can fail: a stage module importing a recipe is reported."""
    climbing = tmp_path / "grid.py"
    climbing.write_text("def boxes():\n    from camloc.boxes.multilevel import MultiLevel\n")
    assert climbs({"camloc.boxes.grid": climbing}) == [
        "camloc.boxes.grid (floor 3) imports camloc.boxes.multilevel (floor 1)"]


def test_the_package_list_holds_every_package():
    """An installed camloc holds every package of the tree (the list once named three of them)."""
    from setuptools import find_packages

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(ROOT, include=config["packages"]["find"]["include"]))
    wanted = {module_name(p.parent) if p.name == "__init__.py" else "" for p in library_modules()} - {""}
    wanted = {name for name in wanted if not name.startswith("app_pages")}
    assert wanted <= found and {"camloc.boxes", "camloc.io", "camloc.models", "camloc.pipeline"} <= found
