"""The scenario reference docs/scenarios.md is generated from the config schema.

It must list every key of engine/config/scenario.py with its type, default and the validity rule
the code enforces, so it cannot drift from the code: these tests regenerate it and
compare. Regenerate after a schema change with ``python -m ssbx.engine.cli.scenario_docs``.
"""

import dataclasses
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
    import re

    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: link to {target!r} does not resolve"


def test_pointers_to_docs_name_existing_pages_and_sections():
    # "docs/physics.md §5" in a docstring must name a page that exists and a section it has
    import re

    physics = (ROOT / "docs" / "physics.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\d+)\. ", physics, flags=re.M))
    for path in _text_files():
        text = path.read_text(encoding="utf-8")
        for page in re.findall(r"docs/(\w+)\.md", text):
            assert (ROOT / "docs" / f"{page}.md").is_file(), f"{path.relative_to(ROOT)}: docs/{page}.md missing"
        for first, rest in re.findall(r"docs/physics\.md (§\d+)((?:[–,]\s*§?\d+)*)", text):
            for number in re.findall(r"\d+", first + rest):
                assert number in sections, f"{path.relative_to(ROOT)}: docs/physics.md §{number} does not exist"
