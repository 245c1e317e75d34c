"""The README documents what the code does: its schema table is the code's schema."""

from __future__ import annotations

from pathlib import Path

from rlaudit.schema import schema_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_schema_table_matches_code():
    assert schema_markdown() in README.read_text(encoding="utf-8")


def test_readme_quick_start_scripts_exist():
    root = README.parent
    text = README.read_text(encoding="utf-8")
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert f"bash {script}" in text
        assert (root / script).is_file()
