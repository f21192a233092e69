"""The scenario reference docs/scenarios.md is generated from the config schema.

It must list every key of engine/config/scenario.py with its type, default and the validity rule
the code enforces, so it cannot drift from the code: these tests regenerate it and
compare. Regenerate after a schema change with ``python -m ssbx.engine.cli.scenario_docs``.
"""

import dataclasses
import re
from pathlib import Path

import pytest

from ssbx.engine.cli import scenario_docs
from ssbx.engine.config.scenario import SECTIONS

DOC = Path(__file__).resolve().parent.parent / "docs" / "scenarios.md"
HOW = "regenerate it with `python -m ssbx.engine.cli.scenario_docs` and commit docs/scenarios.md"


def test_every_schema_key_is_documented():
    problems = scenario_docs.missing_docs()
    assert not problems, ("engine/cli/scenario_docs.py KEY_DOCS does not match the schema of engine/config/scenario.py: "
                          + "; ".join(problems) + f" — add/remove the entries, then {HOW}")


def test_committed_reference_is_up_to_date():
    assert DOC.is_file(), f"docs/scenarios.md is missing; {HOW}"
    assert DOC.read_text(encoding="utf-8") == scenario_docs.render(), f"docs/scenarios.md is out of date; {HOW}"


def test_reference_lists_every_key_with_its_default():
    text = DOC.read_text(encoding="utf-8")
    for section, cls in SECTIONS.items():
        assert f"## [{section}]" in text
        block = text.split(f"## [{section}]", 1)[1].split("\n## ", 1)[0]
        for field in dataclasses.fields(cls):
            row = next((line for line in block.splitlines() if line.startswith(f"| `{field.name}` |")), None)
            assert row is not None, f"[{section}] {field.name} missing from docs/scenarios.md; {HOW}"
            cells = [c.strip() for c in row.split(" | ")]
            if field.default is not None:
                assert cells[2] == f"`{scenario_docs._toml(field.default)}`", (section, field.name, cells[2])


def test_valid_column_is_the_check_the_code_makes():
    # the rule shown for a bounded key is the message of the ConfigError validate() raises:
    # values on either side of the documented bound are accepted / refused accordingly
    from ssbx.engine.config.scenario import scenario_from_dict
    from ssbx.engine.errors import ConfigError

    rule = scenario_docs.valid_text("particle", next(f for f in dataclasses.fields(SECTIONS["particle"])
                                                     if f.name == "reactive_fraction"))
    assert rule == "valid range is [0.0, 1.0]"
    scenario_from_dict({"particle": {"reactive_fraction": 1.0}})
    with pytest.raises(ConfigError, match="particle.reactive_fraction"):
        scenario_from_dict({"particle": {"reactive_fraction": 1.0001}})


def test_a_key_without_documentation_is_reported(monkeypatch):
    # the completeness check is what keeps new schema keys from going undocumented
    trimmed = {section: dict(keys) for section, keys in scenario_docs.KEY_DOCS.items()}
    del trimmed["numerics"]["chunk_steps"]
    trimmed["numerics"]["no_such_key"] = ("s", "stale entry")
    monkeypatch.setattr(scenario_docs, "KEY_DOCS", trimmed)
    problems = scenario_docs.missing_docs()
    assert "numerics.chunk_steps: no entry in KEY_DOCS" in problems
    assert "numerics.no_such_key: in KEY_DOCS but not in the schema" in problems
    with pytest.raises(KeyError):
        scenario_docs.render()


ROOT = DOC.parent.parent


def _text_files():
    for folder in ("engine", "kernels", "tests", "benchmarks", "examples", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".toml", ".md") and path.is_file():
                yield path
    yield ROOT / "README.md"


def test_links_between_docs_resolve():
    for page in _shipped_docs():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: link to {target!r} does not resolve"


def test_pointers_to_docs_name_existing_pages_and_sections():
    # "docs/physics.md §5" in a docstring must name a page that exists and a section it has
    physics = (ROOT / "docs" / "physics.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\d+)\. ", physics, flags=re.M))
    for path in _text_files():
        text = path.read_text(encoding="utf-8")
        for page in re.findall(r"docs/(\w+)\.md", text):
            assert (ROOT / "docs" / f"{page}.md").is_file(), f"{path.relative_to(ROOT)}: docs/{page}.md missing"
        for first, rest in re.findall(r"docs/physics\.md (§\d+)((?:[–,]\s*§?\d+)*)", text):
            for number in re.findall(r"\d+", first + rest):
                assert number in sections, f"{path.relative_to(ROOT)}: docs/physics.md §{number} does not exist"


# ---------------------------------------------------------------------------------------------
# Citations of the code in the shipped docs (README.md, notebooks/README.md, docs/*.md) must
# name things that exist: files, modules and their attributes, tests, imports in the Python
# examples, and the options of the `ssbx` subcommands and of the benchmark scripts. Text
# checks plus imports and in-process argparse: a renamed file, function or option fails here.
# ---------------------------------------------------------------------------------------------

FOLDERS = ("engine", "kernels", "tests", "benchmarks", "examples", "notebooks")
# `engine/solve/cell_step.py`, `examples/focus/`, `kernels/conduction.solve_potential` (file.attribute)
PATH_RE = re.compile(r"(?<![\w/.-])((?:" + "|".join(FOLDERS) + r")/[\w./-]*[\w/])")
# `ssbx.engine.io.run_file.load_run`, `engine.model.particle.rollout`, `kernels.ocv.windowed_ocv`
DOTTED_RE = re.compile(r"(?<![\w/.-])(?:ssbx\.)?((?:engine|kernels)(?:\.\w+)+)")
FILE_SUFFIXES = (".py", ".toml", ".ipynb", ".json", ".sh", ".md", ".csv", ".npy", ".h5", ".png", ".svg", ".txt",
                 ".tif", ".xdmf")


def _shipped_docs():
    return [ROOT / "README.md", ROOT / "notebooks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _cited_paths(text):
    """(path, attribute or None) for every repository path a text cites; a path followed by a
    placeholder (`results/x_<device>.json`) is incomplete and not checked."""
    for match in PATH_RE.finditer(text):
        cited, after = match.group(1), text[match.end():]
        braces = re.match(r"\.\{([\w,]+)\}", after)
        if braces:  # results/spm_comparison.{json,png}: one file per suffix
            for suffix in braces.group(1).split(","):
                yield f"{cited}.{suffix}", None
            continue
        if after[:1] in ("<", "{", "*", "$"):
            continue
        if cited.endswith(FILE_SUFFIXES) or cited.endswith("/"):
            yield cited, None
            continue
        head, _, last = cited.rpartition("/")
        stem, dot, attribute = last.partition(".")
        if dot:  # kernels/conduction.solve_potential: a module file and a name in it
            yield f"{head}/{stem}.py", attribute.split(".")[0]
        else:  # kernels/diffusion: a module or a folder
            yield cited, None


def _exists(path):
    target = ROOT / path
    return target.exists() or (target.suffix == "" and target.with_suffix(".py").is_file())


def _resolve_dotted(dotted):
    """Import the longest module prefix of ``engine.x.y.name`` under ``ssbx`` and look the rest
    up as attributes; returns None when it resolves, else what is missing."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module("ssbx." + ".".join(parts[:cut]))
        except ModuleNotFoundError as err:
            if err.name and not ("ssbx." + ".".join(parts[:cut])).startswith(err.name):
                raise  # a module that exists failed to import: not a docs problem, show it
            continue
        for i, name in enumerate(parts[cut:]):
            if not hasattr(obj, name):
                return f"ssbx.{'.'.join(parts[:cut + i])} has no attribute {name!r}"
            obj = getattr(obj, name)
        return None
    return f"no module ssbx.{parts[0]}"


def test_cited_files_exist():
    problems = []
    for page in _shipped_docs():
        for path, attribute in _cited_paths(page.read_text(encoding="utf-8")):
            if not _exists(path):
                problems.append(f"{page.relative_to(ROOT)}: {path} does not exist")
            elif attribute is not None:
                module = path[:-3].replace("/", ".")
                missing = _resolve_dotted(f"{module}.{attribute}")
                if missing:
                    problems.append(f"{page.relative_to(ROOT)}: {path} cited with .{attribute}: {missing}")
    assert not problems, "stale file citations:\n" + "\n".join(sorted(set(problems)))


def test_cited_modules_and_names_exist():
    problems = []
    for page in _shipped_docs():
        for dotted in set(DOTTED_RE.findall(page.read_text(encoding="utf-8"))):
            missing = _resolve_dotted(dotted)
            if missing:
                problems.append(f"{page.relative_to(ROOT)}: {dotted}: {missing}")
    assert not problems, "stale module citations:\n" + "\n".join(sorted(problems))


def _ssbx_parsers(monkeypatch):
    """The argparse parser of every `ssbx` subcommand, exactly as ``ssbx`` builds them: run
    ``main`` in-process and stop it where it would parse the command line."""
    import argparse
    import importlib

    cli = importlib.import_module("ssbx.engine.cli.main")  # the package re-exports main() itself

    class Built(BaseException):  # not an Exception: main()'s error handling must not catch it
        pass

    def capture(self, *args, **kwargs):
        raise Built(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Built) as built:
        cli.main([])
    parser = built.value.args[0]
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def _command_lines(text):
    """Shell lines of fenced and indented code blocks (continuations joined) and inline code spans."""
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S):
        yield from block.replace("\\\n", " ").splitlines()
    without_blocks = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    yield from re.findall(r"^    +(ssbx .*)$", without_blocks, flags=re.M)  # indented code blocks
    for span in re.findall(r"`([^`]+)`", without_blocks):  # a span may wrap onto the next line
        if "\n" not in span or (span.startswith("ssbx ") and "\n\n" not in span):
            yield span.replace("\n", " ")


def _cited_options(text):
    """(subcommand, option) for every `ssbx <subcommand> ... --option` in code; the options of
    one command run up to the next command (`ssbx`, `;`, `&&`, `|`) or a comment."""
    for line in _command_lines(text):
        for command in re.split(r"(?=\bssbx )", line):
            match = re.match(r"ssbx (\w[\w-]*)(.*)", command)
            if not match:
                continue
            rest = re.split(r"&&|;|\||\s#", match.group(2))[0]
            yield match.group(1), None
            for option in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", rest):
                yield match.group(1), option


def test_cited_cli_options_exist(monkeypatch):
    parsers = _ssbx_parsers(monkeypatch)
    problems = []
    for page in _shipped_docs():
        for command, option in _cited_options(page.read_text(encoding="utf-8")):
            if command not in parsers:
                problems.append(f"{page.relative_to(ROOT)}: `ssbx {command}`: no such subcommand "
                                f"(there are {sorted(parsers)})")
            elif option is not None and option not in parsers[command]._option_string_actions:
                problems.append(f"{page.relative_to(ROOT)}: `ssbx {command} {option}`: not an option of "
                                f"ssbx {command}")
    assert not problems, "stale command lines:\n" + "\n".join(sorted(set(problems)))


def test_the_citation_checks_catch_stale_references(monkeypatch):
    # planted stale references of each kind are reported (the checks are not vacuous)
    stale = ("See `engine/solve/no_such_step.py`, `kernels/conduction.no_such_solver`, "
             "`ssbx.engine.io.run_file.no_such_loader`, `engine.no_such_package.x` and\n"
             "```bash\nssbx run examples/default.toml --no-such-option \\\n  --out x.h5\nssbx frobnicate\n```\n")
    cited = dict.fromkeys(_cited_paths(stale))
    assert not _exists("engine/solve/no_such_step.py")
    assert ("kernels/conduction.py", "no_such_solver") in cited
    assert "no attribute 'no_such_solver'" in _resolve_dotted("kernels.conduction.no_such_solver")
    assert "no attribute 'no_such_loader'" in _resolve_dotted("engine.io.run_file.no_such_loader")
    assert _resolve_dotted("engine.no_such_package.x") is not None
    assert _resolve_dotted("engine.io.run_file.load_run") is None
    options = set(_cited_options(stale))
    assert {("run", "--no-such-option"), ("run", "--out"), ("frobnicate", None)} <= options
    parsers = _ssbx_parsers(monkeypatch)
    assert "--no-such-option" not in parsers["run"]._option_string_actions
    assert "--out" in parsers["run"]._option_string_actions and "frobnicate" not in parsers


def _cited_benchmark_options(text):
    """(script, option) for every `python benchmarks/x.py ... --option` in code."""
    for line in _command_lines(text):
        for match in re.finditer(r"benchmarks/(\w+\.py)([^;&|#]*)", line):
            yield match.group(1), None
            for option in re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", match.group(2).split("benchmarks/")[0]):
                yield match.group(1), option


def test_cited_test_functions_and_benchmark_options_exist():
    defined = set()
    for path in (ROOT / "tests").glob("*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), flags=re.M))
    problems = []
    for page in _shipped_docs():
        text = page.read_text(encoding="utf-8")
        for name in set(re.findall(r"(?:`|::)(test_\w+)(?=`|\b)(?!\.py)", text)):
            if name not in defined:
                problems.append(f"{page.relative_to(ROOT)}: test {name} is not defined in tests/")
        for script, option in set(_cited_benchmark_options(text)):
            source = ROOT / "benchmarks" / script
            if option is not None and source.is_file() and f'"{option}"' not in source.read_text(encoding="utf-8"):
                problems.append(f"{page.relative_to(ROOT)}: benchmarks/{script} has no option {option}")
    assert not problems, "stale test or benchmark citations:\n" + "\n".join(sorted(problems))


def test_benchmark_option_check_catches_a_stale_option():
    stale = "```bash\npython benchmarks/roofline.py --gpu --no-such-flag\n```\nand `python benchmarks/diffusion.py --sizes 64`"
    cited = set(_cited_benchmark_options(stale))
    assert {("roofline.py", "--gpu"), ("roofline.py", "--no-such-flag"), ("diffusion.py", "--sizes")} <= cited
    source = (ROOT / "benchmarks" / "roofline.py").read_text(encoding="utf-8")
    assert '"--gpu"' in source and '"--no-such-flag"' not in source


def _cited_imports(text):
    """(module, name) of every ``from ssbx.x import name`` in the python code blocks (name
    None for ``import ssbx.x``); a block that is not whole Python is read statement by statement."""
    import ast

    for block in re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S):
        statements = re.findall(r"^(from ssbx\S* import \([^)]*\)|from ssbx\S* import [^\n]+|import ssbx[^\n]*)",
                                block, flags=re.M)
        for statement in statements:
            for node in ast.walk(ast.parse(statement.split("#")[0].strip())):
                if isinstance(node, ast.ImportFrom):
                    yield from ((node.module, alias.name) for alias in node.names)
                elif isinstance(node, ast.Import):
                    yield from ((alias.name, None) for alias in node.names)


def test_imports_in_python_examples_resolve():
    import importlib

    problems = []
    for page in _shipped_docs():
        for module, name in set(_cited_imports(page.read_text(encoding="utf-8"))):
            try:
                imported = importlib.import_module(module)
            except ModuleNotFoundError:
                problems.append(f"{page.relative_to(ROOT)}: no module {module}")
                continue
            if name is not None and not hasattr(imported, name):
                try:
                    importlib.import_module(f"{module}.{name}")
                except ModuleNotFoundError:
                    problems.append(f"{page.relative_to(ROOT)}: from {module} import {name}: no such name")
    assert not problems, "stale imports in examples:\n" + "\n".join(sorted(problems))
    stale = "```python\nfrom ssbx.engine.io.run_file import (load_run,\n    no_such_reader)\n```\n"
    assert set(_cited_imports(stale)) == {("ssbx.engine.io.run_file", "load_run"),
                                          ("ssbx.engine.io.run_file", "no_such_reader")}
