"""common.schema: the integer time keys ``to_doc`` adds, and the conversions whose last result
it reads back instead of computing (``ms_to_dt``, ``received_now``)."""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from common import schema
from common.schema import Ticker, Trade, ms_to_dt, received_now, time_key

UTC = timezone.utc


def _trade(ts: datetime, received_at: datetime) -> Trade:
    return Trade("kraken", "BTC/USD", "BTC/USD", "spot", ts, received_at, "7", 1.5, 2.0, "buy")


def test_time_key_floors_to_the_millisecond_as_bson_stores_it():
    assert time_key(datetime(2026, 12, 2, 7, 0, 0, 123999, tzinfo=UTC)) == 1_796_194_800_123
    assert time_key(datetime(2026, 12, 2, 7, 0, 0, 124000, tzinfo=UTC)) == 1_796_194_800_124
    assert time_key(datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC)) == -1


@pytest.mark.parametrize("micro", [0, 1, 999, 123_000, 123_999, 999_999])
def test_to_doc_time_keys_of_datetimes_no_conversion_made(micro):
    # Parsed from text (Kraken's RFC 3339): the arithmetic path, exact at every sub-ms offset.
    ts = datetime(2026, 12, 2, 7, 0, 0, micro, tzinfo=UTC)
    received = ts + timedelta(microseconds=1_500)
    doc = _trade(ts, received).to_doc()
    assert doc["t"] == 1_796_194_800_000 + micro // 1000
    assert doc["rt"] == 1_796_194_800_000 + (micro + 1_500) // 1000
    assert (doc["ts"], doc["received_at"]) == (ts, received)


def test_to_doc_reads_the_key_of_the_last_conversion_and_computes_the_others():
    first = ms_to_dt(1_796_194_800_123)
    assert ms_to_dt("1796194800123") is first            # one datetime per millisecond
    newer = ms_to_dt(1_796_194_800_124.9)                 # fraction dropped, as before
    assert newer == datetime(2026, 12, 2, 7, 0, 0, 124000, tzinfo=UTC)
    received = received_now()
    older_received = received - timedelta(milliseconds=3)
    # ``newer`` is the last conversion (its key is read back); ``first`` is not any more.
    assert _trade(newer, received).to_doc()["t"] == 1_796_194_800_124
    assert _trade(first, older_received).to_doc()["t"] == 1_796_194_800_123
    assert _trade(newer, received).to_doc()["rt"] == time_key(received)
    assert _trade(first, older_received).to_doc()["rt"] == time_key(received) - 3
    # A value that fails to convert leaves the kept conversion consistent.
    with pytest.raises(ValueError):
        ms_to_dt("1e400")
    with pytest.raises(ValueError):
        ms_to_dt(float("inf"))
    assert _trade(newer, received).to_doc()["t"] == 1_796_194_800_124
    assert ms_to_dt(1_796_194_800_124) is newer


def test_the_kept_conversion_is_a_true_pair_from_the_start():
    # Before any conversion the kept pair is the epoch and 0, so a record at the epoch is right.
    for module_state in (("_ts_dt", "_ts_ms"), ("_received_dt", "_received_ms")):
        dt, ms = (getattr(schema, name) for name in module_state)
        assert time_key(dt) == ms
    # ... also in a fresh process, before any conversion was made.
    code = ("from common import schema as s; from common.schema import Trade, EPOCH; "
            "print(Trade('x', 'A', 'A', 'spot', EPOCH, EPOCH).to_doc()['t'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_every_record_type_gets_both_keys():
    ts = ms_to_dt(1_796_194_800_500)
    ticker = Ticker("okx", "BTC-USDT", "BTC/USDT", "spot", ts, ts + timedelta(milliseconds=2),
                    last=1.0)
    doc = ticker.to_doc()
    assert (doc["t"], doc["rt"]) == (1_796_194_800_500, 1_796_194_800_502)
    assert doc == {
        **{name: getattr(ticker, name) for name in schema.FIELDS[Ticker]},
        "t": 1_796_194_800_500, "rt": 1_796_194_800_502}
