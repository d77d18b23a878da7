// cryptodata dashboard: /realtime for the first picture, /ws for live records, /health (every
// 2 s) for freshness, book state, gaps and the collector heartbeat, /market-data and /ohlcv for
// chart history. No build step; the only library is the vendored lightweight-charts.
"use strict";

const HEALTH_EVERY_MS = 2000;
const KEY_STORE = "cryptodata.apiKey";
const state = {
  rows: new Map(),        // "exchange|market|symbol" -> {exchange, market, symbol, pair, ticker, vl}
  health: null,
  problems: {ws: null, api: null, collector: null},
  ws: null, wsRetryMs: 500, wsOpen: false, updates: 0, ready: false,
  priceSeries: new Map(), candleSeries: null, candleKey: null, lastTime: new Map(),
};
window.dashboard = state;   // read by the browser test and handy in the console

const $ = (sel) => document.querySelector(sel);
const rowKey = (r) => `${r.exchange}|${r.market}|${r.symbol}`;
const fmt = (x, digits = 8) => (x === null || x === undefined || Number.isNaN(x)) ? "–"
  : Number(x).toLocaleString("en-US", {maximumFractionDigits: digits});
const seconds = (iso) => Math.floor(Date.parse(iso) / 1000);

// ---- API access with the same key rules as the API (X-API-Key, asked for once) ------------
function apiKey() { return localStorage.getItem(KEY_STORE) || ""; }

class Unauthorized extends Error {}

async function api(path) {
  const headers = apiKey() ? {"X-API-Key": apiKey()} : {};
  const resp = await fetch(path, {headers});
  if (resp.status === 401) {
    $("#keyform").hidden = false;
    $("#keyerror").textContent = apiKey() ? "key rejected" : "this API needs a key";
    throw new Unauthorized(path);
  }
  const body = await resp.json();
  if (!resp.ok && resp.status !== 503) throw new Error(`${path}: ${resp.status}`);
  return body;
}

$("#keyform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem(KEY_STORE, $("#key").value.trim());
  $("#keyform").hidden = true;
  start();
});

// ---- degraded states: one banner line per problem ------------------------------------------
function setProblem(kind, text) {
  state.problems[kind] = text;
  const lines = Object.values(state.problems).filter(Boolean);
  const banner = $("#banner");
  banner.hidden = lines.length === 0;
  banner.textContent = lines.join(" · ");
}

function badge(el, st, text) { el.dataset.state = st; el.textContent = text ?? st; }

// ---- table ------------------------------------------------------------------------------------
function upsertRow(rec) {
  const key = rowKey(rec);
  let row = state.rows.get(key);
  if (!row) {
    row = {exchange: rec.exchange, market: rec.market, symbol: rec.symbol, pair: rec.pair};
    state.rows.set(key, row);
  }
  if (rec.type === "market_data") row.ticker = rec;
  else if (rec.type === "volume_liquidity") row.vl = rec;
  return row;
}

function streamAge(row) {
  const ex = state.health?.exchanges?.[row.exchange];
  const age = ex?.stream_age_s?.[`market_data:${row.market}:${row.symbol}`];
  const stale = ex ? (ex.stale_streams || []).includes(`market_data:${row.market}:${row.symbol}`)
    || age === undefined : Boolean(row.ticker?.stale);
  return {age, stale};
}

function render() {
  const body = $("#markets tbody");
  const keys = [...state.rows.keys()].filter((k) => state.rows.get(k).ticker).sort();
  for (const key of keys) {
    const row = state.rows.get(key);
    let tr = body.querySelector(`tr[data-key="${CSS.escape(key)}"]`);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.key = key;
      tr.innerHTML = ["exchange", "market", "symbol", "last", "bid", "ask", "spread", "volume",
        "book", "age"].map((c) => `<td class="${c}"></td>`).join("")
        + `<td><span class="badge state"></span></td>`;
      body.appendChild(tr);
    }
    const t = row.ticker || {};
    const mid = (t.bid && t.ask) ? (t.bid + t.ask) / 2 : null;
    const spread = row.vl?.spread_bps ?? (mid ? (t.ask - t.bid) / mid * 1e4 : null);
    const book = state.health?.exchanges?.[row.exchange]?.books?.[`${row.market}:${row.symbol}`];
    const {age, stale} = streamAge(row);
    const cells = {exchange: row.exchange, market: row.market, symbol: row.symbol,
      last: fmt(t.last), bid: fmt(t.bid), ask: fmt(t.ask), spread: fmt(spread, 2),
      volume: fmt(t.volume_24h, 4), book: book?.state ?? "–", age: fmt(age, 1)};
    for (const [cls, text] of Object.entries(cells)) tr.querySelector(`.${cls}`).textContent = text;
    tr.dataset.state = stale ? "stale" : "live";
    badge(tr.querySelector(".state"), stale ? "stale" : "live");
  }
  [...body.children].sort((a, b) => a.dataset.key.localeCompare(b.dataset.key))
    .forEach((tr) => body.appendChild(tr));
}

function renderExchanges() {
  const box = $("#exchanges");
  const exchanges = state.health?.exchanges || {};
  for (const [name, ex] of Object.entries(exchanges)) {
    let card = box.querySelector(`[data-exchange="${name}"]`);
    if (!card) {
      card = document.createElement("div");
      card.className = "exchange";
      card.dataset.exchange = name;
      card.innerHTML = `<span class="name">${name}</span><span class="badge fresh"></span>`
        + `<div class="books"></div><div class="gaps"></div>`;
      box.appendChild(card);
    }
    badge(card.querySelector(".fresh"), ex.fresh ? "fresh" : "stale");
    const books = Object.values(ex.books || {});
    const notLive = books.filter((b) => b.state !== "live").length;
    card.querySelector(".books").textContent =
      `books: ${books.length - notLive} live` + (notLive ? `, ${notLive} resyncing` : "");
    card.querySelector(".gaps").textContent =
      `open gaps: ${ex.gap_ledger?.open ?? 0} (24 h: ${ex.gap_ledger?.last_24h ?? 0})`;
  }
}

// ---- /health poll ---------------------------------------------------------------------------
async function pollHealth() {
  try {
    const h = await api("/health");
    state.health = h;
    setProblem("api", h.mongodb?.reachable === false ? "MongoDB unreachable" : null);
    const age = h.collector?.heartbeat_age_s;
    const down = age === null || age === undefined || (h.problems || []).some(
      (p) => p.startsWith("collector"));
    badge($("#collector"), down ? "down" : "running",
      age === null || age === undefined ? "collector never reported" : `collector ${fmt(age, 0)} s`);
    setProblem("collector", down ? (h.problems || []).filter((p) => p.startsWith("collector"))
      .join("; ") || "collector has never reported" : null);
    renderExchanges();
    render();
  } catch (err) {
    if (!(err instanceof Unauthorized)) {
      setProblem("api", "API unreachable, retrying");
      badge($("#collector"), "unknown", "collector ?");
    }
  } finally {
    setTimeout(pollHealth, HEALTH_EVERY_MS);
  }
}

// ---- charts ---------------------------------------------------------------------------------
const COLORS = {binance: "#d4a017", bybit: "#444", kraken: "#6f42c1", gateio: "#2a7de1", okx: "#1a9c5b"};
const ANY_BTC_USD = "BTC/USDT|BTC/USD";
let priceChart = null;
let candleChart = null;

function chartPairs(pairChoice) { return pairChoice === ANY_BTC_USD ? ["BTC/USDT", "BTC/USD"] : [pairChoice]; }

// One spot row per exchange for the chosen pair (BTC/USDT preferred over BTC/USD).
function priceRows() {
  const pairs = chartPairs($("#pair").value || ANY_BTC_USD);
  const chosen = new Map();
  for (const row of state.rows.values()) {
    if (row.market !== "spot" || !row.ticker || !pairs.includes(row.pair)) continue;
    const have = chosen.get(row.exchange);
    if (!have || pairs.indexOf(row.pair) < pairs.indexOf(have.pair)
        || (row.pair === have.pair && row.symbol < have.symbol)) chosen.set(row.exchange, row);
  }
  return chosen;
}

function pushPoint(series, key, time, value) {
  if (value === null || value === undefined) return;
  const last = state.lastTime.get(key);
  if (last !== undefined && time < last) return;    // the chart wants ascending times
  state.lastTime.set(key, time);
  series.update({time, value});
}

async function buildPriceChart() {
  if (priceChart) priceChart.remove();
  state.priceSeries.clear();
  priceChart = LightweightCharts.createChart($("#price-chart"),
    {timeScale: {timeVisible: true, secondsVisible: true}, height: 320});
  for (const [exchange, row] of priceRows()) {
    const series = priceChart.addLineSeries({color: COLORS[exchange] || "#888", lineWidth: 2,
      title: exchange});
    const key = rowKey(row);
    state.priceSeries.set(key, series);
    state.lastTime.delete(`price:${key}`);
    try {
      const q = new URLSearchParams({exchange, symbol: row.symbol, market: "spot", limit: "300"});
      const hist = (await api(`/market-data?${q}`)).data.reverse();
      for (const rec of hist) pushPoint(series, `price:${key}`, seconds(rec.received_at), rec.last);
    } catch (err) { /* the live points still arrive */ }
    pushPoint(series, `price:${key}`, seconds(row.ticker.received_at), row.ticker.last);
  }
}

async function buildCandleChart() {
  if (candleChart) candleChart.remove();
  candleChart = LightweightCharts.createChart($("#candle-chart"),
    {timeScale: {timeVisible: true}, height: 320});
  state.candleSeries = candleChart.addCandlestickSeries();
  state.candleKey = $("#candle-key").value;
  state.lastTime.delete("candle");
  if (!state.candleKey) return;
  const [exchange, market, symbol] = state.candleKey.split("|");
  try {
    const q = new URLSearchParams({exchange, market, symbol, interval: "1m", limit: "120"});
    for (const c of (await api(`/ohlcv?${q}`)).data.reverse()) addCandle(c);
  } catch (err) { /* live candles still arrive */ }
}

function addCandle(c) {
  const time = seconds(c.ts);
  const last = state.lastTime.get("candle");
  if (last !== undefined && time < last) return;
  state.lastTime.set("candle", time);
  state.candleSeries.update({time, open: c.open, high: c.high, low: c.low, close: c.close});
}

function fillSelectors() {
  const pairSel = $("#pair");
  const pairs = [...new Set([...state.rows.values()].filter((r) => r.market === "spot" && r.pair)
    .map((r) => r.pair))].sort();
  const wantPairs = [ANY_BTC_USD, ...pairs];
  if (pairSel.options.length !== wantPairs.length) {
    const keep = pairSel.value || ANY_BTC_USD;
    pairSel.innerHTML = wantPairs.map((p) => `<option value="${p}">${p === ANY_BTC_USD
      ? "BTC/USDT or BTC/USD" : p}</option>`).join("");
    pairSel.value = keep;
  }
  const keySel = $("#candle-key");
  const keys = [...state.rows.keys()].sort();
  if (keySel.options.length !== keys.length) {
    const keep = keySel.value || keys.find((k) => k.startsWith("binance|spot|")) || keys[0];
    keySel.innerHTML = keys.map((k) => `<option value="${k}">${k.replaceAll("|", " ")}</option>`)
      .join("");
    keySel.value = keep;
  }
}
$("#pair").addEventListener("change", buildPriceChart);
$("#candle-key").addEventListener("change", buildCandleChart);

// ---- /ws ------------------------------------------------------------------------------------
function onRecord(rec) {
  state.updates += 1;
  if (rec.type === "ohlcv") {
    if (state.candleSeries && rowKey(rec) === state.candleKey) addCandle(rec);
    return;
  }
  const row = upsertRow(rec);
  if (rec.type === "market_data") {
    const series = state.priceSeries.get(rowKey(row));
    if (series) pushPoint(series, `price:${rowKey(row)}`, seconds(rec.received_at), rec.last);
  }
  fillSelectors();
  render();
}

function connectWs() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  // Browsers cannot set headers on a WebSocket: the key goes in ?api_key= (the access log has no query string; Sentry scrubs api_key=).
  const query = apiKey() ? `?api_key=${encodeURIComponent(apiKey())}` : "";
  const ws = new WebSocket(`${proto}://${location.host}/ws${query}`);
  state.ws = ws;
  ws.onopen = () => {
    for (const type of ["market_data", "volume_liquidity", "ohlcv"]) {
      ws.send(JSON.stringify({op: "subscribe", type}));
    }
  };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.op === "subscribed" && !state.wsOpen) {
      state.wsOpen = true;
      state.wsRetryMs = 500;
      badge($("#conn"), "live", "live stream");
      setProblem("ws", null);
    } else if (msg.op === "record") {
      onRecord({...msg.data, type: msg.data.type});
    }
  };
  ws.onclose = () => {
    state.wsOpen = false;
    badge($("#conn"), "reconnecting", "reconnecting");
    setProblem("ws", "Live stream disconnected, reconnecting");
    setTimeout(async () => { await loadRealtime().catch(() => {}); connectWs(); }, state.wsRetryMs);
    state.wsRetryMs = Math.min(state.wsRetryMs * 2, 10000);
  };
}

// ---- start ----------------------------------------------------------------------------------
async function loadRealtime() {
  const all = (await api("/realtime")).data;
  for (const bySymbol of Object.values(all)) {
    for (const byMarket of Object.values(bySymbol)) {
      for (const byType of Object.values(byMarket)) {
        for (const [type, rec] of Object.entries(byType)) upsertRow({...rec, type});
      }
    }
  }
  fillSelectors();
  render();
}

let started = false;
async function start() {
  try {
    await loadRealtime();
  } catch (err) {
    if (err instanceof Unauthorized) return;      // the key form is shown; start() again on submit
    setProblem("api", "API unreachable, retrying");
    setTimeout(start, 2000);
    return;
  }
  setProblem("api", null);
  await buildPriceChart();
  await buildCandleChart();
  if (!started) {
    started = true;
    pollHealth();
    connectWs();
  }
  state.ready = true;
}
start();
