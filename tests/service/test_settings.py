"""README.md's settings table and the server's one settings object (service/config.py) say the
same: every field names its variable and the table documents it, and every variable the table
says the server reads is one the settings object reads."""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _table() -> dict[str, str]:
    """README's settings table: variable -> its 'read by' cell."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
                rows[name] = cells[1]
    return rows


def _config_variables() -> set[str]:
    """Every variable service/config.py reads (each field of Settings names one)."""
    return set(re.findall(r'"((?:BITPLAN|RAY)_[A-Z_]+)"', (ROOT / "service" / "config.py").read_text()))


def test_the_table_is_found():
    assert {"BITPLAN_DATABASE_URL", "BITPLAN_MODEL_ROOT", "RAY_ADDRESS"} <= set(_table())


@pytest.mark.parametrize("f", fields(Settings), ids=lambda f: f.name)
def test_every_setting_names_its_variable_and_the_readme_documents_it(f):
    env = f.metadata.get("env")
    assert env, f"Settings.{f.name} has no metadata['env']"
    table = _table()
    assert env in table, f"{env} (Settings.{f.name}) is missing from README.md's settings table"
    assert "server" in table[env], f"README.md says {env} is read by {table[env]!r}, not the server"


def test_every_variable_the_server_reads_is_documented():
    missing = _config_variables() - set(_table())
    assert not missing, f"service/config.py reads {sorted(missing)}, which README.md's settings table lacks"


def test_every_documented_server_variable_is_a_setting():
    """A row that says the server reads it names a variable of the settings object, not one read
    somewhere else in the server."""
    server = {name for name, readers in _table().items() if re.search(r"\bserver\b", readers)}
    assert server - _config_variables() == set()
