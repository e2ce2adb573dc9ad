"""benchmarks/tables.py: the committed benchmarks/README.md matches results/*.json, and the
generator really reads them (a changed result changes the table; --check then fails)."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("benchmark_tables", BENCH / "tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_readme_is_up_to_date(tables):
    text = (BENCH / "README.md").read_text()
    assert tables.stale_sections(text) == [], "run: python benchmarks/tables.py"
    assert tables.main(["--check"]) == 0


def test_every_section_is_in_the_readme_once(tables):
    text = (BENCH / "README.md").read_text()
    for name in tables.SECTIONS:
        assert text.count(f"<!-- tables:begin {name} -->") == 1, name
        assert text.count(f"<!-- tables:end {name} -->") == 1, name


def test_rendering_is_idempotent(tables):
    text = (BENCH / "README.md").read_text()
    once = tables.render(text)
    assert tables.render(once) == once


def test_a_changed_result_changes_the_table_and_check_fails(tables, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(BENCH / "results", results, ignore=shutil.ignore_patterns("*.png"))
    readme = tmp_path / "README.md"
    readme.write_text((BENCH / "README.md").read_text())
    assert tables.main(["--check", "--readme", str(readme), "--results", str(results)]) == 0

    spread = results / "process_spread_amd-epyc-2c.json"
    data = json.loads(spread.read_text())
    data["per_process_median_ms"]["ort"][0] = 12345.0
    spread.write_text(json.dumps(data))
    assert tables.stale_sections(readme.read_text(), results) == ["spread-quiet"]
    assert tables.main(["--check", "--readme", str(readme), "--results", str(results)]) == 1

    assert tables.main(["--readme", str(readme), "--results", str(results)]) == 0
    new = readme.read_text()
    assert "12.35 s" in new and "12.35 s" not in (BENCH / "README.md").read_text()
    assert tables.main(["--check", "--readme", str(readme), "--results", str(results)]) == 0
    # outside the markers nothing moved
    strip = lambda t: tables._SECTION.sub("", t)  # noqa: E731
    assert strip(new) == strip((BENCH / "README.md").read_text())


def test_unknown_or_unclosed_sections_are_refused(tables):
    with pytest.raises(tables.TablesError, match="unknown section"):
        tables.render("<!-- tables:begin nope -->\n<!-- tables:end nope -->\n")
    with pytest.raises(tables.TablesError, match="end marker"):
        tables.render("<!-- tables:begin matrix -->\nno end\n")


def test_a_missing_results_file_is_named(tables, tmp_path):
    with pytest.raises(tables.TablesError, match="torch_eager_amd-epyc-2c.json"):
        tables.render("<!-- tables:begin eager -->\n<!-- tables:end eager -->\n", tmp_path)
