"""The documentation states what the code does: the data model lists every field of every record
type exactly as ``common/schema.py`` defines it."""
from __future__ import annotations

import re

from common import schema
from tests.conftest import ROOT

COMMON = {"exchange", "symbol", "pair", "market", "ts", "received_at"}


def _field_rows() -> dict[str, set[str]]:
    text = (ROOT / "docs" / "data-model.md").read_text()
    section = text.split("## Fields of every record", 1)[1]
    rows = {}
    for match in re.finditer(r"^\| `(\w+)` \| (.*) \|$", section, re.MULTILINE):
        rows[match.group(1)] = set(re.findall(r"`(\w+)`", match.group(2)))
    return rows


def test_data_model_lists_every_record_field():
    rows = _field_rows()
    assert set(rows) == {cls.collection for cls in schema.RECORD_TYPES}
    for cls in schema.RECORD_TYPES:
        fields = set(schema.FIELDS[cls]) - COMMON
        documented = rows[cls.collection] - {"buy", "sell", "exchange", "trades", "1m"} | (
            {"trades"} if "trades" in fields else set())
        assert documented == fields, cls.__name__
