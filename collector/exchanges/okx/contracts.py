"""Contract sizes of OKX SWAP instruments (contracts -> base units). A size-bearing SWAP record
is only built with the instrument's own ``ctVal``: an unknown instrument (``51001``, or not
listed) or an inverse one (``ctVal`` in USD) is marked unavailable; a failed fetch is retried
with backoff meanwhile, and the instrument's records are held back. Never a default of 1."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from collector.connection import Backoff
from collector.exchanges.okx import endpoints as ep
from collector.exchanges.okx.api import get_data
from collector.kit.books import PARSE_ERRORS, SymbolUnavailable
from collector.rest import RestError
from common.schema import PERP

if TYPE_CHECKING:
    from collector.exchanges.okx.feed import OkxFeed

log = logging.getLogger(__name__)


class ContractSizes:
    def __init__(self, feed: OkxFeed, retry_max_s: float = 60.0) -> None:
        self.feed = feed
        self.values: dict[str, float] = {}
        self.retry_max_s = retry_max_s

    def get(self, inst: str) -> float | None:
        """Base units per contract; 1 for spot; None while a SWAP's ctVal is unknown."""
        if not inst.endswith(ep.SWAP_SUFFIX):
            return 1.0
        return self.values.get(inst)

    async def load(self, inst: str) -> bool:
        """One attempt; True once ``inst`` is settled (known or unavailable)."""
        feed = self.feed
        try:
            data = await get_data(feed.perp_rest, ep.REST_INSTRUMENTS,
                                  {"instType": "SWAP", "instId": inst})
            if not data:
                raise SymbolUnavailable("not listed in /api/v5/public/instruments")
            item = data[0]
            if item.get("ctType") != ep.LINEAR:
                feed.mark_unavailable(PERP, inst, f"ctType {item.get('ctType')!r}: contract "
                                                  f"value in {item.get('ctValCcy')}, not base")
                return True
            self.values[inst] = float(item["ctVal"])
            return True
        except SymbolUnavailable as exc:
            feed.mark_unavailable(PERP, inst, str(exc))
            return True
        except (RestError, *PARSE_ERRORS) as exc:
            log.warning("okx: ctVal of %s unavailable (%r); its records are held back", inst, exc)
            feed.stats.error_once(feed.name, f"ctVal of {inst} unavailable; records held back "
                                             f"until it is known")
            return False

    async def retry(self, inst: str) -> None:
        backoff = Backoff(initial_s=1.0, max_s=self.retry_max_s)
        while not await self.load(inst):
            await asyncio.sleep(backoff.next_delay())
