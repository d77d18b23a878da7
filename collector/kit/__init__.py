"""The feed kit: what every exchange adapter is built from.

- ``spec``: a venue's declarative description (connections, channels, limits, book protocol) and
  the subscription planner that splits it over connections within the venue's limits;
- ``availability``: symbols the exchange rejected, keyed by (market, symbol);
- ``emitters``: the change-or-interval rule for funding / open interest and the candle closer;
- ``tradeids``: trade-id continuity (holes become ``trade`` gaps);
- ``books``: the two book drivers, snapshot+diff (REST snapshot spliced with buffered diffs) and
  resubscribe (a fresh subscription brings a fresh snapshot), over ``booksync`` / ``resync``.

Each piece has one rule and no exchange knowledge; ``collector.exchanges.base.Feed`` wires them.
"""
