// voipmon web page: dashboard (dashboard.js), calls, one call (streams + SIP ladder; its
// quality chart and audio in callmedia.js), sensors, one sensor's calls in progress
// (refreshed every 2 s). Plain JS, no build.
// Every value from the API reaches the page through textContent or SVG attributes,
// never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PAGE = 50;
const $ = (sel) => document.querySelector(sel);

async function api(path, options) {
  const response = await fetch(path, Object.assign({ headers: { Accept: "application/json" } }, options));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmt = {
  time: (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "").replace("Z", "") : ""),
  secs: (s) => {
    if (s === null || s === undefined) return "";
    const whole = Math.round(s);
    const m = Math.floor(whole / 60), sec = whole % 60;
    return m ? `${m}:${String(sec).padStart(2, "0")}` : `${s.toFixed(1)} s`;
  },
  num: (v, digits) => (v === null || v === undefined ? "" : Number(v).toFixed(digits)),
  int: (v) => (v === null || v === undefined ? "" : Number(v).toLocaleString("en")),
};

const hostport = (ip, port) => (String(ip).includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`);

function callMos(cdr) {
  const values = ["a_mos_f1", "b_mos_f1", "a_mos_f2", "b_mos_f2", "a_mos_adapt", "b_mos_adapt"]
    .map((k) => cdr[k]).filter((v) => typeof v === "number");
  return values.length ? Math.min(...values) : null;
}

function mosClass(mos) {
  if (mos === null) return "";
  return mos >= 4 ? "good" : mos >= 3.6 ? "fair" : "poor";
}

function result(cdr) {
  const code = cdr.lastSIPresponseNum;
  const text = cdr.lastSIPresponse || (code ? String(code) : "");
  return el("span", { class: code >= 200 && code < 300 ? "ok" : code >= 300 ? "fail" : "" }, text);
}

// -- routing ------------------------------------------------------------------------

function parseHash() {
  const hash = location.hash.replace(/^#/, "") || "/dashboard";
  const [path, query] = hash.split("?");
  return { parts: path.split("/").filter(Boolean), params: new URLSearchParams(query || "") };
}

function show(view) {
  for (const name of ["dashboard", "calls", "call", "sensors", "live", "registrations", "sipmsg"]) {
    $(`#view-${name}`).hidden = name !== view;
  }
  $("#nav-registrations").classList.toggle("active", view === "registrations");
  $("#nav-sipmsg").classList.toggle("active", view === "sipmsg");
  $("#nav-dashboard").classList.toggle("active", view === "dashboard");
  $("#nav-calls").classList.toggle("active", view === "calls" || view === "call");
  $("#nav-sensors").classList.toggle("active", view === "sensors" || view === "live");
  if (view !== "live") stopLive();
}

async function route() {
  const { parts, params } = parseHash();
  try {
    if (parts[0] === "call" && parts[1]) { show("call"); await showCall(parts[1]); }
    else if (parts[0] === "sensors" && parts[1] && parts[2] === "calls") {
      show("live"); await showLive(parts[1]);
    }
    else if (parts[0] === "sensors") { show("sensors"); await showSensors(); }
    else if (parts[0] === "registrations") { show("registrations"); await showRegistrations(params); }
    else if (parts[0] === "sipmsg") { show("sipmsg"); await showSipMessages(params); }
    else if (parts[0] === "calls") { show("calls"); await showCalls(params); }
    else { show("dashboard"); await showDashboard(params); }
  } catch (error) {
    console.error(error);
  }
}

// -- calls --------------------------------------------------------------------------

const FILTERS = ["from", "to", "caller", "called", "callid", "id_sensor", "mos_below"];
// filters the dashboard's links add (no field in the form; kept until Reset)
const EXTRA_FILTERS = ["answered", "ner", "has_mos", "loss_from", "loss_to", "jitter_from",
                       "jitter_to"];
let sensorNames = {};

async function loadSensorNames() {
  try {
    const { sensors } = await api("api/sensors");
    sensorNames = {};
    const select = $("#filters select[name=id_sensor]");
    const current = select.value;
    select.replaceChildren(el("option", { value: "" }, "any"));
    for (const s of sensors) {
      sensorNames[s.id_sensor] = s.name || `sensor ${s.id_sensor}`;
      select.append(el("option", { value: s.id_sensor }, `${s.id_sensor} ${s.name || ""}`));
    }
    select.value = current;
  } catch (error) { /* the calls table still works without names */ }
}

function toApiTime(local) {  // the inputs are UTC, as the table
  if (!local) return "";
  return (local.length === 16 ? local + ":00" : local) + "Z";
}

function fromApiTime(iso) {
  return iso ? iso.replace(/Z$/, "").replace(/\.\d+$/, "") : "";
}

async function showCalls(params) {
  await loadSensorNames();
  const form = $("#filters");
  for (const name of FILTERS) {
    const value = params.get(name) || "";
    form.elements[name].value = name === "from" || name === "to" ? fromApiTime(value) : value;
  }
  const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
  const query = new URLSearchParams();
  for (const name of [...FILTERS, ...EXTRA_FILTERS]) if (params.get(name)) query.set(name, params.get(name));
  const extra = EXTRA_FILTERS.filter((name) => params.get(name));
  $("#calls-extra").textContent = extra.length
    ? `Also: ${extra.map((name) => `${name.replace("_", " ")} = ${params.get(name)}`).join(", ")}` : "";
  query.set("limit", PAGE);
  query.set("offset", offset);
  const status = $("#calls-status");
  const tbody = $("#calls tbody");
  status.textContent = "Loading…";
  status.className = "status";
  let cdrs;
  try {
    ({ cdrs } = await api(`api/cdrs?${query}`));
  } catch (error) {
    status.textContent = error.message;
    status.className = "status error";
    tbody.replaceChildren();
    return;
  }
  tbody.replaceChildren(...cdrs.map(callRow));
  status.textContent = cdrs.length ? "" : "No calls match.";
  $("#page").textContent = cdrs.length ? `${offset + 1}–${offset + cdrs.length}` : "";
  $("#prev").disabled = offset === 0;
  $("#next").disabled = cdrs.length < PAGE;
  $("#prev").onclick = () => go(params, Math.max(0, offset - PAGE));
  $("#next").onclick = () => go(params, offset + PAGE);
}

function go(params, offset) {
  const next = new URLSearchParams(params);
  if (offset) next.set("offset", offset); else next.delete("offset");
  location.hash = `#/calls?${next}`;
}

function callRow(cdr) {
  const mos = callMos(cdr);
  const lost = (cdr.a_lost || 0) + (cdr.b_lost || 0);
  const received = (cdr.a_received || 0) + (cdr.b_received || 0);
  const jitter = Math.max(cdr.a_maxjitter || 0, cdr.b_maxjitter || 0);
  const open = () => { location.hash = `#/call/${cdr.id}`; };
  const download = cdr.pcap_on
    ? el("a", { href: `api/cdrs/${cdr.id}/pcap`, class: "download", download: "",
                title: "Download the call's SIP and RTP as one pcap",
                onclick: (e) => e.stopPropagation() }, "pcap")
    : el("span", { class: "muted" }, "—");
  return el("tr", { class: "call", "data-id": cdr.id, tabindex: 0, onclick: open,
                    onkeydown: (e) => { if (e.key === "Enter") open(); } },
    el("td", {}, fmt.time(cdr.calldate)),
    el("td", {}, cdr.caller),
    el("td", {}, cdr.called),
    el("td", { class: "num" }, fmt.secs(cdr.duration)),
    el("td", {}, result(cdr)),
    el("td", { class: `num ${mosClass(mos)}` }, fmt.num(mos, 2)),
    el("td", { class: "num" }, received + lost ? `${(100 * lost / (received + lost)).toFixed(1)} %` : ""),
    el("td", { class: "num" }, jitter ? `${jitter.toFixed(1)} ms` : ""),
    el("td", {}, sensorNames[cdr.id_sensor] || cdr.id_sensor),
    el("td", {}, download));
}

function applyFilters(event) {
  event.preventDefault();
  const form = $("#filters");
  const params = new URLSearchParams();
  const current = parseHash().params;
  for (const name of EXTRA_FILTERS) if (current.get(name)) params.set(name, current.get(name));
  for (const name of FILTERS) {
    let value = form.elements[name].value.trim();
    if (name === "from" || name === "to") value = toApiTime(value);
    if (value) params.set(name, value);
  }
  const target = `#/calls?${params}`;
  if (location.hash === target) route(); else location.hash = target;
}

// -- one call -----------------------------------------------------------------------

async function showCall(id) {
  const title = $("#call-title");
  const facts = $("#call-facts");
  title.textContent = `Call ${id}`;
  facts.replaceChildren();
  $("#streams tbody").replaceChildren();
  $("#ladder").replaceChildren();
  let cdr;
  try {
    ({ cdr } = await api(`api/cdrs/${encodeURIComponent(id)}`));
  } catch (error) {
    $("#ladder-status").textContent = error.message;
    $("#ladder-status").className = "status error";
    return;
  }
  title.textContent = `${cdr.caller || "?"} → ${cdr.called || "?"}`;
  const rows = [
    ["Start (UTC)", fmt.time(cdr.calldate)], ["End (UTC)", fmt.time(cdr.callend)],
    ["Duration", fmt.secs(cdr.duration)], ["Connected", fmt.secs(cdr.connect_duration)],
    ["Result", cdr.lastSIPresponse || cdr.lastSIPresponseNum], ["Hung up by", cdr.whohanged],
    ["Caller", hostport(cdr.sipcallerip, cdr.sipcallerport)],
    ["Called", hostport(cdr.sipcalledip, cdr.sipcalledport)],
    ["Sensor", sensorNames[cdr.id_sensor] || cdr.id_sensor], ["Call-ID", cdr.callid],
  ];
  for (const [name, value] of rows) {
    if (value === "" || value === null || value === undefined) continue;
    facts.append(el("dt", {}, name), el("dd", {}, value));
  }
  const link = $("#call-download");
  link.hidden = !cdr.pcap_on;
  link.href = `api/cdrs/${cdr.id}/pcap`;
  $("#streams tbody").replaceChildren(...(cdr.rtp || []).map((s) => el("tr", {},
    el("td", {}, hostport(s.saddr, s.sport)), el("td", {}, hostport(s.daddr, s.dport)),
    el("td", {}, `0x${(s.ssrc >>> 0).toString(16).padStart(8, "0")}`),
    el("td", {}, s.codec || s.payload),
    el("td", { class: "num" }, fmt.int(s.received)), el("td", { class: "num" }, fmt.int(s.lost)),
    el("td", { class: "num" }, `${fmt.num(s.avgjitter, 1)} / ${fmt.num(s.maxjitter, 1)}`),
    el("td", { class: `num ${mosClass(s.mos_f1)}` },
       `${fmt.num(s.mos_f1, 2)} / ${fmt.num(s.mos_f2, 2)} / ${fmt.num(s.mos_adapt, 2)}`))));
  showCallMedia(cdr);  // quality chart and audio player (callmedia.js), while the ladder loads
  const status = $("#ladder-status");
  status.textContent = "Loading the SIP messages…";
  status.className = "status";
  try {
    const { messages } = await api(`api/cdrs/${cdr.id}/sip`);
    status.textContent = messages.length ? "" : "No SIP message in the call's capture.";
    if (messages.length) $("#ladder").append(ladder(messages));
  } catch (error) {
    status.textContent = error.message;
    status.className = "status error";
  }
}

function ladder(messages) {
  const hosts = [];
  const key = hostport;
  for (const m of messages) {
    for (const h of [key(m.src, m.sport), key(m.dst, m.dport)]) if (!hosts.includes(h)) hosts.push(h);
  }
  const left = 170, gap = 230, top = 40, row = 34;
  const width = left + gap * (hosts.length - 1) + 120;
  const height = top + row * messages.length + 20;
  const root = svg("svg", { class: "ladder", width, height, viewBox: `0 0 ${width} ${height}`,
                            role: "img", "aria-label": "SIP ladder diagram" });
  const x = (h) => left + gap * hosts.indexOf(h);
  hosts.forEach((h) => {
    root.append(svg("text", { x: x(h), y: 16, class: "host", "text-anchor": "middle" }, h));
    root.append(svg("line", { x1: x(h), y1: 24, x2: x(h), y2: height - 6, class: "lifeline" }));
  });
  const t0 = messages[0].ts;
  messages.forEach((m, i) => {
    const y = top + row * i + 14;
    const x1 = x(key(m.src, m.sport)), x2 = x(key(m.dst, m.dport));
    const kind = m.kind === "request" ? "request" : m.status < 200 ? "provisional"
      : m.status < 300 ? "success" : "failure";
    const g = svg("g", { class: `message ${kind}` });
    g.append(svg("title", {}, `${m.first_line}\nCSeq: ${m.cseq}\n${m.proto} ${hostport(m.src, m.sport)} → ${hostport(m.dst, m.dport)}\n${m.time}`));
    g.append(svg("text", { x: 8, y: y + 4, class: "time" }, `+${(m.ts - t0).toFixed(3)} s`));
    const tip = x2;
    let dir = x2 >= x1 ? 1 : -1;
    let ty = y;
    if (x1 === x2) {  // to itself: a small loop back into the lifeline
      g.append(svg("path", { d: `M${x1},${y - 6} h40 v12 h-40`, class: "arrow" }));
      dir = -1; ty = y + 6;
    } else {
      g.append(svg("line", { x1, y1: y, x2: x2 - 9 * dir, y2: y, class: "arrow" }));
    }
    g.append(svg("path", { d: `M${tip},${ty} l${-10 * dir},-5 v10 z`, class: "head" }));
    g.append(svg("text", { x: (x1 + x2) / 2 + (x1 === x2 ? 60 : 0), y: y - 5, class: "label",
                           "text-anchor": "middle" }, m.label + (m.cseq ? ` (${m.cseq})` : "")));
    root.append(g);
  });
  return root;
}

// -- sensors ------------------------------------------------------------------------

// The view refreshes itself every few seconds while it is shown (not while a name is
// being edited); each sensor's health is the central's live view of it (its metrics).
const SENSORS_REFRESH_MS = 3000;
let sensorsTimer = null;

async function showSensors() {
  const status = $("#sensors-status");
  const tbody = $("#sensors tbody");
  clearTimeout(sensorsTimer);
  sensorsTimer = setTimeout(refreshSensors, SENSORS_REFRESH_MS);
  let sensors;
  try {
    ({ sensors } = await api("api/sensors"));
  } catch (error) {
    status.textContent = error.message;
    status.className = "status error";
    return;
  }
  status.textContent = sensors.length ? "" : "No sensor has connected yet.";
  status.className = "status";
  tbody.replaceChildren(...sensors.map(sensorRow));
}

function refreshSensors() {
  if ($("#view-sensors").hidden) return;
  if ($("#sensors .rename-form")) {
    sensorsTimer = setTimeout(refreshSensors, SENSORS_REFRESH_MS);
    return;
  }
  showSensors();
}

const perSecond = (v) => (v === null || v === undefined ? "" : Number(v).toFixed(v < 10 ? 1 : 0));
const epochTime = (t) => (t === null || t === undefined ? "" : fmt.time(new Date(t * 1000).toISOString()));

function sensorState(s) {
  const h = s.health;
  // A sensor this central has not seen since it started: what the database says.
  const state = h ? h.state : (s.connected ? "online" : "offline");
  const title = h ? { ok: "connected, no drops, queue short", dropping: "dropping packets",
                      lagging: "its queue is long", offline: "not connected to this central" }[state]
                  : "not seen by this central since it started";
  return el("span", { class: `state ${state === "online" ? "ok" : state}`, title }, state);
}

function sensorRow(s) {
  const name = el("span", { class: "name" }, s.name || `sensor ${s.id_sensor}`);
  const cell = el("td", {}, name);
  const rename = el("button", { type: "button", class: "rename", onclick: () => {
    const input = el("input", { type: "text", value: s.name || "", maxlength: 256, "aria-label": "New name" });
    const save = el("button", { type: "submit" }, "Save");
    const form = el("form", { class: "rename-form", onsubmit: async (e) => {
      e.preventDefault();
      try {
        await api(`api/sensors/${s.id_sensor}`, {
          method: "PATCH", headers: { "Content-Type": "application/json", Accept: "application/json" },
          body: JSON.stringify({ name: input.value }) });
        await showSensors();
      } catch (error) {
        $("#sensors-status").textContent = error.message;
        $("#sensors-status").className = "status error";
      }
    } }, input, save);
    cell.replaceChildren(form);
    input.focus();
  } }, "Rename");
  const h = s.health || {};
  return el("tr", { "data-id": s.id_sensor, "data-state": s.health ? h.state : "" },
    el("td", { class: "num" }, s.id_sensor), cell,
    el("td", { class: "sensor-state" }, sensorState(s)),
    el("td", {}, s.mode === "mirror" ? "packet mirroring" : s.mode === "local" ? "local processing" : s.mode || ""),
    el("td", {}, s.health ? epochTime(h.last_seen) : fmt.time(s.last_seen)),
    el("td", { class: "num" }, perSecond(h.packets_per_second)),
    el("td", { class: "num" }, perSecond(h.drops_per_second)),
    el("td", { class: "num" }, fmt.int(h.calls_active)),
    el("td", { class: "num" }, fmt.int(s.health ? h.queue_records : s.queue_depth)),
    el("td", { class: "num" }, h.clock_skew_seconds === null || h.clock_skew_seconds === undefined
      ? "" : `${h.clock_skew_seconds.toFixed(2)} s`),
    el("td", { class: "num" }, fmt.int(s.packets)), el("td", { class: "num" }, fmt.int(s.drops)),
    el("td", {}, s.version || ""),
    el("td", {}, el("a", { href: `#/sensors/${s.id_sensor}/calls`, class: "live-link",
                          title: "Calls in progress on this sensor" }, "active calls")),
    el("td", {}, rename));
}

// -- one sensor's calls in progress ------------------------------------------------

const LIVE_EVERY = 2000;
let liveTimer = null;

function stopLive() {
  if (liveTimer !== null) { clearTimeout(liveTimer); liveTimer = null; }
}

// Each stream of a call in progress: its figures so far (the sensor's listcalls; an
// older sensor sends only the count).
function liveStreams(c) {
  if (!Array.isArray(c.rtp)) return [el("span", {}, fmt.int(c.streams))];
  if (!c.rtp.length) return [el("span", { class: "muted" }, "no RTP yet")];
  return c.rtp.map((s) => {
    const scores = [s.mos_f1, s.mos_f2, s.mos_adapt].filter((v) => typeof v === "number");
    const mos = scores.length ? Math.min(...scores) : null;
    return el("div", { class: "live-stream", "data-ssrc": s.ssrc },
      el("span", { class: "live-path" }, `${s.direction || "?"} ${s.src} → ${s.dst} ${s.codec || ""}`),
      el("span", { class: `live-mos ${mosClass(mos)}` }, ` MOS ${fmt.num(mos, 2)}`),
      el("span", { class: "live-loss" }, ` · loss ${fmt.num(s.loss, 1)} % (${fmt.int(s.lost)} of ${fmt.int(s.received + s.lost)})`),
      el("span", { class: "live-jitter" }, ` · jitter ${fmt.num(s.jitter, 1)} ms (max ${fmt.num(s.maxjitter, 1)})`));
  });
}

async function showLive(id) {
  stopLive();
  const status = $("#live-status");
  let body;
  try {
    body = await api(`api/sensors/${encodeURIComponent(id)}/calls`);
  } catch (error) {
    $("#live-title").textContent = `Calls in progress on sensor ${id}`;
    status.textContent = error.message;
    status.className = "status error";
    $("#live tbody").replaceChildren();
    body = null;
  }
  if (body) {
    const where = body.source === "central" ? "analysed on this central (packet mirroring)"
      : "asked of the sensor over its channel";
    $("#live-title").textContent = `Calls in progress on ${body.name || `sensor ${id}`}`;
    status.textContent = `${body.calls.length} call${body.calls.length === 1 ? "" : "s"} in `
      + `progress, ${where}; refreshed every ${LIVE_EVERY / 1000} s `
      + `(${new Date().toISOString().slice(11, 19)} UTC)`;
    status.className = "status";
    $("#live tbody").replaceChildren(...body.calls.map((c) => el("tr", {},
      el("td", {}, fmt.time(c.calldate)),
      el("td", { class: "num live-duration",
                 title: c.connect_duration === null || c.connect_duration === undefined
                   ? "not answered" : `answered ${fmt.secs(c.connect_duration)} ago` },
         fmt.secs(c.duration)),
      el("td", {}, c.caller || ""),
      el("td", {}, c.called || ""), el("td", { class: `state ${c.state || ""}` }, c.state || ""),
      el("td", { class: "num" }, c.lastSIPresponseNum || ""),
      el("td", { class: "live-streams" }, ...liveStreams(c)),
      el("td", { class: "callid" }, c.callid || ""))));
  }
  if (parseHash().parts[0] === "sensors" && parseHash().parts[1] === id) {
    liveTimer = setTimeout(() => showLive(id), LIVE_EVERY);
  }
}

// -- start --------------------------------------------------------------------------

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  $("#filters").addEventListener("submit", applyFilters);
  $("#reset").addEventListener("click", () => { location.hash = "#/calls"; });
  route();
});
