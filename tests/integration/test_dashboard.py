"""The dashboard in a real browser (headless Chromium, tests/support/browser.py) against a real
``python -m api`` on seeded data: every venue rendered with its exact figures, a newly stored
record shown live, a resyncing book shown, the stale state when the collector stops, the
reconnecting banner when the API stops. Screenshots: logs/dashboard*.png.

Chromium comes from Debian (``apt-get install chromium``, done by .ci/run); without it the test
is skipped, except under CI (``CI`` set), where a missing browser is a failure."""
from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from collector.writer import Writer
from common.schema import now_utc
from tests.support.browser import Browser, find_chromium
from tests.support.helpers import wait_for
from tests.support.live_api import ROOT, VENUES, api_process, seed, ticker, write_status

SCREENSHOTS = ROOT / "logs"
STALE_AFTER_S = 4


@pytest.fixture
def browser():
    executable = find_chromium()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required under CI (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    b = Browser(executable)
    try:
        yield b
    finally:
        b.close()


def money(x: float, digits: int = 8) -> str:
    """What the page shows (toLocaleString en-US, at most ``digits`` decimals)."""
    return f"{x:,.{digits}f}".rstrip("0").rstrip(".")


ROWS_JS = """[...document.querySelectorAll('#markets tbody tr')].map(tr => ({
  key: tr.dataset.key, state: tr.dataset.state,
  cells: Object.fromEntries([...tr.querySelectorAll('td[class]')]
    .map(td => [td.className, td.textContent]))
}))"""
CARDS_JS = """Object.fromEntries([...document.querySelectorAll('#exchanges .exchange')].map(c =>
  [c.dataset.exchange, {fresh: c.querySelector('.fresh').dataset.state,
   books: c.querySelector('.books').textContent, gaps: c.querySelector('.gaps').textContent}]))"""


@pytest.mark.timeout(240)
async def test_dashboard_live_stale_and_reconnecting(mongo_uri, mongo_db, tmp_path, browser):
    now = await seed(mongo_db)
    collector_on = asyncio.Event()
    collector_on.set()
    resyncing: list[str | None] = [None]

    async def heartbeat() -> None:
        """The collector's status document, refreshed while the 'collector' runs."""
        while True:
            if collector_on.is_set():
                await write_status(mongo_db, now_utc(), resyncing=resyncing[0])
            await asyncio.sleep(0.5)

    beating = asyncio.get_running_loop().create_task(heartbeat())
    try:
        with api_process(mongo_uri, mongo_db.name, tmp_path / "api.log",
                         CRYPTODATA_STALE_AFTER_S=str(STALE_AFTER_S),
                         CRYPTODATA_API_RATE_PER_S="0") as url:
            browser.navigate(f"{url}/")

            async def rows_when(predicate):
                async def check():
                    rows = browser.js(ROWS_JS)
                    return rows if rows and predicate(rows) else None
                return await wait_for(check, timeout_s=60, interval_s=0.2, what="dashboard rows")

            # Every venue, with exactly the stored figures, live.
            rows = await rows_when(lambda rs: len(rs) == 5 and all(
                r["state"] == "live" and r["cells"]["book"] == "live" for r in rs))
            by_exchange = {r["cells"]["exchange"]: r for r in rows}
            assert sorted(by_exchange) == sorted(VENUES)
            for exchange, (symbol, _, last) in VENUES.items():
                cells = by_exchange[exchange]["cells"]
                assert by_exchange[exchange]["key"] == f"{exchange}|spot|{symbol}"
                assert (cells["symbol"], cells["market"]) == (symbol, "spot")
                assert cells["last"] == money(last)
                assert cells["bid"] == money(last - 0.5) and cells["ask"] == money(last + 0.5)
                assert cells["spread"] == f"{round(1.0 / last * 1e4, 4):.2f}"
                assert cells["volume"] == "1,234.5"
            cards = await wait_for(lambda: _async(lambda: (c := browser.js(CARDS_JS))
                                                   and len(c) == 5 and c), what="exchange cards")
            assert cards["okx"]["gaps"] == "open gaps: 1 (24 h: 1)"
            assert cards["binance"] == {"fresh": "fresh", "books": "books: 1 live",
                                        "gaps": "open gaps: 0 (24 h: 0)"}
            # Charts: one price series per venue; candles up to the seeded current minute.
            assert browser.js("window.dashboard.priceSeries.size") == 5
            minute = int(now.replace(second=0, microsecond=0).timestamp())
            assert browser.js("window.dashboard.lastTime.get('candle')") == minute
            await wait_for(lambda: _async(lambda: browser.js("window.dashboard.wsOpen")),
                           what="live stream subscribed")

            # A record stored now appears without a reload (through /ws).
            writer = Writer(mongo_db)
            writer.submit(ticker("binance", 66000.25, now_utc()))
            assert await writer.flush()
            await rows_when(lambda rs: any(r["key"] == "binance|spot|BTCUSDT"
                                           and r["cells"]["last"] == "66,000.25" for r in rs))
            # A book the collector reports as resyncing.
            resyncing[0] = "kraken"
            await rows_when(lambda rs: any(r["key"] == "kraken|spot|BTC/USD"
                                           and r["cells"]["book"] == "resyncing" for r in rs))
            cards = browser.js(CARDS_JS)
            assert cards["kraken"]["books"] == "books: 0 live, 1 resyncing"
            shot = browser.screenshot(SCREENSHOTS / "dashboard.png")

            # The collector stops: every stream goes stale on the page.
            collector_on.clear()
            await rows_when(lambda rs: len(rs) == 5 and all(r["state"] == "stale" for r in rs))
            cards = browser.js(CARDS_JS)
            assert {name: c["fresh"] for name, c in cards.items()} == {
                name: "stale" for name in VENUES}
            browser.screenshot(SCREENSHOTS / "dashboard-stale.png")
        # The API stops: the page says it is reconnecting.
        banner = await wait_for(lambda: _async(lambda: browser.js(
            "!document.querySelector('#banner').hidden && "
            "document.querySelector('#banner').textContent.includes('reconnecting') && "
            "document.querySelector('#banner').textContent")), timeout_s=30, what="banner")
        assert set(banner.split(" · ")) == {"Live stream disconnected, reconnecting",
                                            "API unreachable, retrying"}
        assert browser.js("document.querySelector('#conn').dataset.state") == "reconnecting"
        browser.screenshot(SCREENSHOTS / "dashboard-api-down.png")
        assert browser.exceptions == []
        assert shot.stat().st_size > 10_000
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


async def _async(fn):
    return fn()


@pytest.mark.timeout(120)
async def test_dashboard_asks_for_the_key_once_when_the_api_requires_one(
        mongo_uri, mongo_db, tmp_path, browser):
    await seed(mongo_db)
    with api_process(mongo_uri, mongo_db.name, tmp_path / "api.log", CRYPTODATA_API_AUTH="on",
                     CRYPTODATA_API_KEYS='["dash-key"]') as url:
        browser.navigate(f"{url}/dashboard")
        form = "document.querySelector('#keyform')"
        await wait_for(lambda: _async(lambda: browser.js(f"!{form}.hidden")), what="key form")
        assert browser.js("document.querySelector('#keyerror').textContent") == \
            "this API needs a key"
        browser.js(f"document.querySelector('#key').value = 'wrong'; {form}.requestSubmit()")
        await wait_for(lambda: _async(lambda: browser.js(
            "document.querySelector('#keyerror').textContent === 'key rejected' && "
            f"!{form}.hidden")), what="wrong key rejected")
        browser.js(f"document.querySelector('#key').value = 'dash-key'; {form}.requestSubmit()")
        # Data over HTTP (X-API-Key) and the live stream (/ws?api_key=) both authenticated.
        await wait_for(lambda: _async(lambda: browser.js(
            "document.querySelectorAll('#markets tbody tr').length === 5 "
            "&& window.dashboard.wsOpen")), timeout_s=60, what="rows and stream with the key")
        # Entered once: a reload reuses the stored key.
        browser.navigate(f"{url}/dashboard")
        await wait_for(lambda: _async(lambda: browser.js(
            "document.querySelectorAll('#markets tbody tr').length === 5")), timeout_s=60,
            what="rows after a reload")
        assert browser.js(f"{form}.hidden") is True
    assert browser.exceptions == []
