"""The package's layers, declared once: a module imports only from its own package or from lower layers -
lazy imports inside functions included - so no import runs upward and no two packages import each other."""
import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "prodcat"

# lowest first; a unit is a top-level module or a sub-package of prodcat
LAYERS = [
    ("errors", "memo", "progress", "distributed", "storage", "review_rule"),  # the foundation: no prodcat import
    ("settings",),  # every setting, declared with its default and doc; the size rules; the checker
    ("probs",),  # TopK, the one probability format
    ("data",),  # the tree, products, texts, photos, folds
    ("outputs",),  # the on-disk layout: paths and file names of a workdir
    ("evaluation",),  # metrics, OOF confidences and review thresholds
    ("models",),  # base models and their bags: fit, predict, save, load
    ("stacking",),  # the stacker model
    ("predict",),  # the Predictor: saved models -> predictions of any file
    ("training",),  # the Run, the fold runner, the stacker's fit, scores, reports, suspects, the submission
    ("review",),  # the review queue, its store and its page
    ("serve",),  # the HTTP service
    ("cli",),  # the command line
    ("__main__",),  # python -m prodcat
]
LAYER = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """prodcat.models.bag -> models; prodcat.cli -> cli."""
    return module.split(".")[1]


def imports() -> list[tuple[str, str, str, int]]:
    """(importing unit, imported unit, file, line) of every prodcat import between two units."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts == ("prodcat", "__init__"):
            continue
        source = unit_of(".".join(parts))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("prodcat.") and unit_of(name) != source:
                    found.append((source, unit_of(name), str(path.relative_to(REPO)), node.lineno))
    return found


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert units == set(LAYER), f"undeclared: {sorted(units - set(LAYER))}, gone: {sorted(set(LAYER) - units)}"


def test_no_import_runs_upward_or_sideways():
    bad = [f"{file}:{line}: {source} (layer {LAYER[source]}) imports {target} (layer {LAYER[target]})"
           for source, target, file, line in imports() if LAYER[target] >= LAYER[source]
           and not (LAYER[target] == LAYER[source] == 0 and target != source and _foundation_ok(source, target))]
    assert not bad, "\n".join(bad)


def _foundation_ok(source: str, target: str) -> bool:
    """Within the foundation only the error types are shared."""
    return target == "errors"


def test_no_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for source, target, _, _ in imports():
        edges.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges.get(start, ()))

    cycles = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if reaches(b, a, {b})})
    assert not cycles, f"packages importing each other: {cycles}"


def test_the_layers_cover_the_code_that_exists(tmp_path):
    """The check reads lazy imports too: an import inside a function counts like one at the top."""
    assert any(file.endswith("training/runner.py") and target == "evaluation" for _, target, file, _ in imports())
    assert Path(PACKAGE / "training").is_dir()


def test_tests_mirror_the_package():
    """Each test file is named for what it tests: test_<unit>.py or test_<unit>_<module>.py (a unit of LAYERS),
    or the docs, the notebooks or this architecture."""
    units = sorted(LAYER, key=len, reverse=True)
    others = {"test_architecture", "test_notebooks"}
    bad = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        name = path.stem.removeprefix("test_")
        unit = next((u for u in units if name == u or name.startswith(u + "_")), None)
        if path.stem in others or name.startswith("docs_"):
            continue
        if unit is None:
            bad.append(path.name)
            continue
        rest = name[len(unit) + 1:]
        folder = PACKAGE / unit
        if rest and folder.is_dir() and not any(rest == p.stem or rest.startswith(p.stem + "_")
                                                for p in folder.rglob("*.py")):
            bad.append(path.name)
    assert not bad, f"test files not named for a module or package: {bad}"
