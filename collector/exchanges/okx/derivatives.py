"""Funding rate and open interest: the WebSocket channels first, REST only while a channel is
rejected or silent for well over its documented cadence (a REST value carries the response
time, so polling while the channel pushes would store duplicates with made-up timestamps)."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from collector.exchanges.okx import endpoints as ep
from collector.exchanges.okx import parsers
from collector.exchanges.okx.api import get_data
from collector.kit.books import PARSE_ERRORS, SymbolUnavailable
from collector.rest import RestError
from common.schema import PERP, now_utc

if TYPE_CHECKING:
    from collector.exchanges.okx.feed import OkxFeed

Key = tuple[str, str]          # (channel, instId)


class ChannelWatch:
    """Per (channel, instId) of the derivatives channels: last push, last subscribe ack, and
    whether the exchange rejected the subscription. REST stands in only while a channel is
    rejected or silent for well over its documented cadence."""

    def __init__(self, max_silence_s: dict[str, float]) -> None:
        self.max_silence_s = dict(max_silence_s)
        self.last_push: dict[Key, float] = {}
        self.subscribed_at: dict[Key, float] = {}
        self.rejected: set[Key] = set()

    def pushed(self, key: Key) -> None:
        self.last_push[key] = time.monotonic()
        self.rejected.discard(key)

    def acked(self, key: Key) -> None:
        if key[0] in self.max_silence_s:
            self.subscribed_at[key] = time.monotonic()

    def unavailable(self, key: Key, since: float) -> bool:
        """Rejected, or silent for longer than its maximum since ``since`` (the poller's
        start), its last push and its last subscribe ack."""
        if key in self.rejected:
            return True
        heard = max(since, self.last_push.get(key, 0.0), self.subscribed_at.get(key, 0.0))
        return time.monotonic() - heard > self.max_silence_s[key[0]]

    def fresh(self, key: Key) -> bool:
        """A push arrived on the current subscription (after its ack) recently enough."""
        last = self.last_push.get(key)
        return last is not None and last >= self.subscribed_at.get(key, 0.0) and \
            time.monotonic() - last <= self.max_silence_s[key[0]]


class DerivativesFallback:
    """The REST stand-in for ``funding-rate`` / ``open-interest`` of one feed."""

    def __init__(self, feed: OkxFeed) -> None:
        self.feed = feed
        self.watch = ChannelWatch(ep.WS_MAX_SILENCE_S)
        self.polls = 0

    def polled(self, inst: str) -> list[str]:
        """The derivatives channels of ``inst`` this partition owns (and so may poll)."""
        return [ch.name for ch in ep.DERIVATIVE_CHANNELS
                if self.feed.owns(PERP, inst, ch.partition_stream)]

    async def run(self) -> None:
        feed = self.feed
        interval = max(feed.ctx.poll_interval_s, 1.0)
        started = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            for inst in feed.symbols(PERP):
                for channel in self.polled(inst):
                    if self.watch.unavailable((channel, inst), started):
                        await self.poll(channel, inst)

    async def repoll(self, inst: str) -> None:
        """After a gap: the current values, unless the channel pushed since resubscribing."""
        for channel in self.polled(inst):
            if not self.watch.fresh((channel, inst)):
                await self.poll(channel, inst)

    async def poll(self, channel: str, inst: str) -> None:
        feed = self.feed
        funding = channel == ep.FUNDING.name
        path, params = ((ep.REST_FUNDING, {"instId": inst}) if funding else
                        (ep.REST_OPEN_INTEREST, {"instType": "SWAP", "instId": inst}))
        payload: Any = None
        try:
            payload = {"data": await get_data(feed.perp_rest, path, params)}
            self.polls += 1
            if funding:
                for record in parsers.parse_funding(payload, now_utc()):
                    feed.emit_derived(record, record.rate)
            elif (factor := feed.ct(inst)) is not None:
                for oi in parsers.parse_open_interest(payload, now_utc(), factor):
                    feed.emit_derived(oi, oi.open_interest)
        except SymbolUnavailable as exc:
            feed.mark_unavailable(PERP, inst, str(exc))
        except RestError as exc:        # a rate limit (50011) has paused the budget already
            feed.stats.error_once(feed.name, f"REST {path} failed: {exc}")
        except PARSE_ERRORS as exc:
            feed.malformed(payload, exc)
