"""The engine's rooms import only downward (docs/design: config → … → cli).

Each subpackage of ``ssbx.engine`` has a rank; a module may import from its own room
or from rooms of lower rank, never from a room above it, lazily inside a function
included. This keeps the data flow one-way and the import graph free of cycles.
"""

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"

RANK = {
    "errors": 0, "phases": 0, "safe_files": 0,
    "materials": 1,
    "config": 2,
    "geometry": 3,
    "physics": 4,
    "model": 5,
    "solve": 6,
    "observables": 7,
    "io": 8,
    "runs": 9,
    "inverse": 10,
    "plots": 11,
    "api": 12, "cli": 12, "__init__": 12,
}


def _room(dotted: str) -> str:
    return dotted.split(".")[2] if dotted.count(".") >= 2 else "__init__"


def _imports(path: Path):
    module = "ssbx.engine." + ".".join(path.relative_to(ENGINE).with_suffix("").parts)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}: relative import 'from {'.' * node.level}{node.module}'; "
                                     "use absolute ssbx.engine imports")
            if node.module.startswith("ssbx.engine"):
                targets = ([node.module + "." + a.name for a in node.names] if node.module in
                           ("ssbx.engine",) else [node.module])
                for t in targets:
                    yield module, t, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("ssbx.engine"):
                    yield module, a.name, node.lineno


def test_every_module_has_a_room():
    rooms = {p.stem if p.parent == ENGINE else p.relative_to(ENGINE).parts[0] for p in ENGINE.rglob("*.py")}
    assert rooms <= set(RANK), f"modules outside the known rooms: {sorted(rooms - set(RANK))}"


def test_imports_only_go_down():
    upward = []
    for path in sorted(ENGINE.rglob("*.py")):
        for src, target, line in _imports(path):
            if RANK[_room(target)] > RANK[_room(src)]:
                upward.append(f"{path.relative_to(ENGINE.parent)}:{line} {_room(src)} imports {target}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_kernels_do_not_import_the_engine():
    kernels = ENGINE.parent / "kernels"
    bad = [f"{p.name}: {n.module}" for p in kernels.glob("*.py") for n in ast.walk(ast.parse(p.read_text()))
           if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("ssbx.engine")]
    assert not bad, bad


def _from_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("ssbx."):
            yield node.module, [a.name for a in node.names], node.lineno


def test_every_engine_import_resolves():
    """Lazy imports inside functions are not run by the other tests' collection: check
    that every ``from ssbx.X import a, b`` in the engine names an existing module and
    that a and b exist in it (as attributes or submodules)."""
    import importlib

    missing = []
    for path in sorted(ENGINE.rglob("*.py")):
        for module, names, line in _from_imports(path):
            where = f"{path.relative_to(ENGINE.parent)}:{line}"
            try:
                mod = importlib.import_module(module)
            except ImportError as err:
                missing.append(f"{where} {module}: {err}")
                continue
            for name in names:
                if not hasattr(mod, name):
                    try:
                        importlib.import_module(f"{module}.{name}")
                    except ImportError:
                        missing.append(f"{where} from {module} import {name}")
    assert not missing, "imports that do not resolve:\n" + "\n".join(missing)


def test_the_package_list_installs_each_room_at_its_import_path():
    """pyproject's setuptools section maps ssbx.engine / ssbx.kernels to their folders and
    lists every subpackage under its own dotted name, so a wheel (a non-editable install)
    puts engine/config/scenario.py at ssbx/engine/config/scenario.py. (A mapping of
    "ssbx.engine.config.scenario" to engine/config once built ssbx/engine/config/scenario/
    scenario.py: editable installs worked, wheels did not.)"""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the tomli backport (a dependency there)
        import tomli as tomllib

    root = ENGINE.parent
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setup["package-dir"] == {"ssbx.engine": "engine", "ssbx.kernels": "kernels"}
    on_disk = {"ssbx.kernels"} | {
        "ssbx.engine" + "".join("." + p for p in init.parent.relative_to(ENGINE).parts)
        for init in ENGINE.rglob("__init__.py") if "__pycache__" not in init.parts}
    assert sorted(setup["packages"]) == sorted(on_disk)
