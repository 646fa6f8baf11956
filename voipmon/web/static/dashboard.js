// voipmon web page: the dashboard (the first view). Figures from GET api/stats, charts in
// plain SVG; every tile, bar and table cell links to the calls it counts (the calls view
// with the /api/cdrs filter the API names for it). Uses api, el, svg, $, fmt from app.js.
"use strict";

const DASH_FIELDS = ["from", "to", "step", "id_sensor", "mos_below"];
const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)} %`);
const secs = (v) => (v === null || v === undefined ? "–" : fmt.secs(v));
const perMin = (v) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
const count = (v) => fmt.int(Math.round(v));
let dashRequest = 0;   // only the latest request's answer is shown

function callsLink(scope, filter) {
  const query = new URLSearchParams(scope);
  for (const [key, value] of Object.entries(filter || {})) query.set(key, value);
  return `#/calls?${query}`;
}

function dashParams() {
  const form = $("#dash-form");
  const params = new URLSearchParams();
  for (const name of DASH_FIELDS) {
    let value = form.elements[name].value.trim();
    if (name === "from" || name === "to") value = toApiTime(value);
    if (value) params.set(name, value);
  }
  return params;
}

function applyDashboard(event) {
  if (event) event.preventDefault();
  const target = `#/dashboard?${dashParams()}`;
  if (location.hash === target) route(); else location.hash = target;
}

const isoMinute = (s) => new Date(s * 1000).toISOString().replace(/\.\d+Z$/, "Z");

function quickRange(seconds) {
  const to = Math.ceil(Date.now() / 60000) * 60;
  const params = dashParams();
  params.set("from", isoMinute(to - seconds));
  params.set("to", isoMinute(to));
  params.delete("step");
  location.hash = `#/dashboard?${params}`;
}

async function showDashboard(params) {
  const form = $("#dash-form");
  const status = $("#dash-status");
  await loadSensorNames();
  const select = form.elements.id_sensor;
  select.replaceChildren(el("option", { value: "" }, "all sensors"),
    ...Object.entries(sensorNames).map(([id, name]) => el("option", { value: id }, `${id} ${name}`)));
  for (const name of DASH_FIELDS) {
    const value = params.get(name) || (name === "mos_below" ? "3.1" : "");
    form.elements[name].value = name === "from" || name === "to" ? fromApiTime(value) : value;
  }
  const query = new URLSearchParams();
  for (const name of DASH_FIELDS) if (params.get(name)) query.set(name, params.get(name));
  status.textContent = "Loading…";
  status.className = "status";
  const request = ++dashRequest;
  let stats;
  let note = "";
  try {
    if (!query.get("from") && !query.get("to")) {
      // a quiet network (or a replayed capture): the day up to the latest call instead
      const { cdrs } = await api("api/cdrs?limit=1");
      const latest = cdrs.length ? Date.parse(cdrs[0].calldate) : NaN;
      if (latest < Date.now() - 86400000) {
        const to = Math.floor(latest / 60000) * 60 + 60;
        query.set("from", isoMinute(to - 86400));
        query.set("to", isoMinute(to));
        note = "No calls in the last 24 hours; these are the 24 hours up to the latest call. ";
      }
    }
    stats = await api(`api/stats?${query}`);
    if (request !== dashRequest) return;
  } catch (error) {
    if (request !== dashRequest) return;
    status.textContent = error.message;
    status.className = "status error";
    for (const id of ["#tiles", "#dash-charts", "#dash-sensors tbody"]) $(id).replaceChildren();
    return;
  }
  form.elements.from.value = fromApiTime(stats.from);
  form.elements.to.value = fromApiTime(stats.to);
  const t = stats.totals;
  status.textContent = t.calls ? `${note}${fmt.time(stats.from)} – ${fmt.time(stats.to)} UTC, ` +
    `step ${stats.step >= 3600 ? `${stats.step / 3600} h` : `${stats.step / 60} min`}`
    : "No calls in this range.";
  renderTiles(stats);
  renderCharts(stats);
  renderSensors(stats);
}

function tile(id, label, value, raw, href, sub) {
  return el("a", { class: "tile", id: `tile-${id}`, href, "data-value": raw === null ? "" : raw },
    el("span", { class: "label" }, label), el("span", { class: "value" }, value), sub || "");
}

function subLink(text, href, id) {
  return el("span", { class: "sub" }, el("a", { href, id }, text));
}

function renderTiles(stats) {
  const t = stats.totals, f = stats.filters, s = t.cdrs;
  $("#tiles").replaceChildren(
    tile("calls", "Calls", fmt.int(t.calls), t.calls, callsLink(s, f.calls),
         el("span", { class: "sub" }, `${perMin(t.calls_per_minute)} per minute`)),
    tile("asr", "ASR", pct(t.asr), t.asr, callsLink(s, f.answered),
         subLink(`${fmt.int(t.failed)} not answered`, callsLink(s, f.failed), "link-failed")),
    tile("ner", "NER", pct(t.ner), t.ner, callsLink(s, f.effective),
         subLink(`${fmt.int(t.ineffective)} network failures`, callsLink(s, f.ineffective),
                 "link-ineffective")),
    tile("acd", "ACD", secs(t.acd), t.acd, callsLink(s, f.answered),
         el("span", { class: "sub" }, `${fmt.int(t.answered)} answered`)),
    tile("mos", `MOS below ${stats.mos_below}`, pct(t.mos_below_share), t.mos_below_share,
         callsLink(s, f.mos_below),
         subLink(`${fmt.int(t.mos_below)} of ${fmt.int(t.mos_known)} with MOS`,
                 callsLink(s, f.mos_known), "link-mos-known")));
}

function bucketLabel(stats, iso) {
  const text = fmt.time(iso);
  return stats.step >= 86400 ? text.slice(0, 10)
    : Date.parse(stats.to) - Date.parse(stats.from) > 86400000 ? text.slice(5, 16) : text.slice(11, 16);
}

function renderCharts(stats) {
  const f = stats.filters;
  const series = (value, filter, format) => stats.series.map((b) => ({
    value: value(b), href: callsLink(b.cdrs, filter), label: bucketLabel(stats, b.from),
    title: `${fmt.time(b.from)} – ${fmt.time(b.to)}: ${format(value(b))} (${fmt.int(b.calls)} calls)`,
  }));
  const histogram = (d) => d.buckets.map((b) => ({
    value: b.calls, href: `#/calls?${b.cdrs}`,
    label: b.to === null ? `≥ ${b.from}` : b.from === 0 && b.to < 0.01 ? "0"
      : b.from > 0 && b.from < 0.01 ? `< ${b.to}` : `${b.from}–${b.to}`,
    title: `${b.to === null ? `${b.from} ${d.unit} or more` : `${b.from} to under ${b.to} ${d.unit}`}: ` +
           `${fmt.int(b.calls)} calls`,
  }));
  const charts = [
    ["calls", "Calls per minute", series((b) => b.calls_per_minute, f.calls, perMin), perMin],
    ["asr", "Answer-seizure ratio (ASR)", series((b) => b.asr, f.answered, pct), pct, 1],
    ["ner", "Network effectiveness (NER)", series((b) => b.ner, f.effective, pct), pct, 1],
    ["acd", "Average call duration (ACD)", series((b) => b.acd, f.answered, secs), secs],
    ["mos", `Calls with MOS below ${stats.mos_below}`,
     series((b) => b.mos_below_share, f.mos_below, pct), pct, 1],
    ["loss", `Packet loss (%), ${fmt.int(stats.loss.known)} calls with media`,
     histogram(stats.loss), count],
    ["jitter", `Jitter (ms), ${fmt.int(stats.jitter.known)} calls with media`,
     histogram(stats.jitter), count],
  ];
  $("#dash-charts").replaceChildren(...charts.map(([id, title, items, format, max]) =>
    el("figure", { class: "chart", id: `chart-${id}` }, el("figcaption", {}, title),
       barChart(items, format, max, title))));
}

function barChart(items, format, fixedMax, label) {
  const W = 480, H = 170, left = 52, right = 6, top = 10, bottom = 24;
  const values = items.map((i) => i.value).filter((v) => v !== null && v !== undefined);
  const max = fixedMax || Math.max(...values, 0) || 1;
  const width = (W - left - right) / Math.max(items.length, 1);
  const gap = width > 6 ? 1 : 0;
  const y = (v) => top + (H - top - bottom) * (1 - v / max);
  const root = svg("svg", { class: "bars", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  for (const v of [0, max / 2, max]) {
    root.append(svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: v ? "grid" : "axis" }));
    root.append(svg("text", { x: left - 5, y: y(v) + 4, class: "tick", "text-anchor": "end" }, format(v)));
  }
  const every = Math.max(1, Math.ceil(items.length / 6));
  items.forEach((item, i) => {
    const x = left + i * width;
    if (i % every === 0) {
      root.append(svg("text", { x: x + width / 2, y: H - 6, class: "tick", "text-anchor": "middle" },
                      item.label));
    }
    if (item.value === null || item.value === undefined) return;
    const link = svg("a", { href: item.href, class: "bar", "data-index": i });
    link.append(svg("title", {}, item.title));
    link.append(svg("rect", { x: x + gap, y: top, width: Math.max(width - 2 * gap, 0.5),
                              height: H - top - bottom, class: "hit" }));
    const h = Math.max(y(0) - y(item.value), item.value > 0 ? 1 : 0);
    link.append(svg("rect", { x: x + gap, y: y(0) - h, width: Math.max(width - 2 * gap, 0.5),
                              height: h, class: "value" }));
    root.append(link);
  });
  return root;
}

function renderSensors(stats) {
  const f = stats.filters;
  const cell = (text, href) => el("td", { class: "num" }, href ? el("a", { href }, text) : text);
  $("#dash-sensors tbody").replaceChildren(...stats.sensors.map((s) => {
    const only = new URLSearchParams(dashParams());
    only.set("id_sensor", s.id_sensor);
    return el("tr", { "data-id": s.id_sensor },
      el("td", {}, el("a", { href: `#/dashboard?${only}`, title: "This sensor's dashboard" },
                     sensorNames[s.id_sensor] || `sensor ${s.id_sensor}`)),
      cell(fmt.int(s.calls), callsLink(s.cdrs, f.calls)),
      cell(pct(s.asr), callsLink(s.cdrs, f.answered)),
      cell(pct(s.ner), callsLink(s.cdrs, f.effective)),
      cell(fmt.int(s.ineffective), callsLink(s.cdrs, f.ineffective)),
      cell(secs(s.acd), callsLink(s.cdrs, f.answered)),
      cell(pct(s.mos_below_share), callsLink(s.cdrs, f.mos_below)));
  }));
}

document.addEventListener("DOMContentLoaded", () => {
  $("#dash-form").addEventListener("submit", applyDashboard);
  for (const button of document.querySelectorAll("#dash-form button[data-range]")) {
    button.addEventListener("click", () => quickRange(Number(button.dataset.range)));
  }
});
