// voipmon web page: SIP that is not a call. The registrations view (flagged sources from
// api/alerts, the current state per user and contact from api/registrations?current=yes,
// failed attempts from api/register_failed) and the SIP messages view (OPTIONS qualify per
// target, and every sip_msg row). Filters and paging as the calls view's, in the hash.
// Uses api, el, $, fmt, hostport, toApiTime, fromApiTime from app.js.
"use strict";

const REG_FILTERS = ["from", "to", "user", "ip", "state", "id_sensor"];
const SIPMSG_FILTERS = ["from", "to", "method", "ip", "qualify", "id_sensor"];
const ACTIVE_STATES = ["OK", "UnknownMessageOK"];

function formToHash(form, names, view) {
  const params = new URLSearchParams();
  for (const name of names) {
    let value = form.elements[name].value.trim();
    if (name === "from" || name === "to") value = toApiTime(value);
    if (value) params.set(name, value);
  }
  const target = `#/${view}?${params}`;
  if (location.hash === target) route(); else location.hash = target;
}

function hashToForm(form, names, params) {
  for (const name of names) {
    const value = params.get(name) || "";
    form.elements[name].value = name === "from" || name === "to" ? fromApiTime(value) : value;
  }
}

function query(params, names, extra) {
  const q = new URLSearchParams();
  for (const name of names) if (params.get(name)) q.set(name, params.get(name));
  for (const [key, value] of Object.entries(extra || {})) q.set(key, value);
  return q;
}

async function fill(statusSel, tbodySel, path, key, row, empty) {
  const status = $(statusSel);
  const tbody = $(tbodySel);
  status.textContent = "Loading…";
  status.className = "status";
  try {
    const body = await api(path);
    const rows = body[key];
    tbody.replaceChildren(...rows.map(row));
    status.textContent = rows.length ? "" : empty;
    return rows;
  } catch (error) {
    status.textContent = error.message;
    status.className = "status error";
    tbody.replaceChildren();
    return null;
  }
}

function pager(prefix, view, params, offset, count) {
  $(`#${prefix}-page`).textContent = count ? `${offset + 1}–${offset + count}` : "";
  $(`#${prefix}-prev`).disabled = offset === 0;
  $(`#${prefix}-next`).disabled = count < PAGE;
  const go = (to) => {
    const next = new URLSearchParams(params);
    if (to) next.set("offset", to); else next.delete("offset");
    location.hash = `#/${view}?${next}`;
  };
  $(`#${prefix}-prev`).onclick = () => go(Math.max(0, offset - PAGE));
  $(`#${prefix}-next`).onclick = () => go(offset + PAGE);
}

// -- registrations ---------------------------------------------------------------------

async function showRegistrations(params) {
  await loadSensorNames();
  hashToForm($("#reg-form"), REG_FILTERS, params);
  const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
  const common = ["from", "to", "ip", "id_sensor"];
  const alerts = await fill("#alerts-status", "#alerts tbody",
    `api/alerts?${query(params, common, { limit: 200 })}`, "alerts", alertRow,
    "No source flagged: no brute force, scan or break-in seen.");
  const flagged = new Set((alerts || []).map((a) => a.sipcallerip));
  const regRow = (r) => registrationRow(r, flagged);
  const rows = await fill("#reg-status", "#registrations tbody",
    `api/registrations?${query(params, REG_FILTERS, { current: "yes", limit: PAGE, offset })}`,
    "registrations", regRow, "No registration matches.");
  pager("reg", "registrations", params, offset, rows ? rows.length : 0);
  await fill("#failed-status", "#reg-failed tbody",
    `api/register_failed?${query(params, ["from", "to", "user", "ip", "id_sensor"], { limit: 200 })}`,
    "register_failed", (r) => failedRow(r, flagged), "No failed registration.");
}

function alertRow(a) {
  const tried = (a.extensions || "").split(",").filter(Boolean);
  const shown = tried.slice(0, 8).join(", ") + (tried.length > 8 ? ", …" : "");
  return el("tr", { class: "flagged", "data-ip": a.sipcallerip, title: a.message || "" },
    el("td", {}, fmt.time(a.created_at)),
    el("td", {}, el("span", { class: "badge" }, a.kind)),
    el("td", {}, a.sipcallerip), el("td", {}, a.sipcalledip),
    el("td", { class: "num" }, fmt.int(a.failures)),
    el("td", {}, `${fmt.int(a.extension_count)}: ${shown}`),
    el("td", {}, a.ua || ""),
    el("td", {}, a.closed ? "over" : "going on"));
}

function registrationRow(r, flagged) {
  const active = ACTIVE_STATES.includes(r.state_name);
  const classes = [flagged.has(r.sipcallerip) ? "flagged" : "", active ? "" : "failed-state"];
  return el("tr", { class: classes.join(" ").trim(), "data-user": r.to_num },
    el("td", {}, fmt.time(r.created_at)),
    el("td", {}, r.to_num), el("td", {}, r.to_domain),
    el("td", {}, r.contact_num ? `${r.contact_num}@${r.contact_domain}` : r.contact_domain),
    el("td", {}, hostport(r.sipcallerip, r.sipcallerport)),
    el("td", {}, el("span", { class: active ? "badge ok" : "badge" }, r.state_name)),
    el("td", { class: "num" }, r.expires === null ? "" : `${r.expires} s`),
    el("td", {}, r.ua || ""),
    el("td", {}, sensorNames[r.id_sensor] || r.id_sensor));
}

function failedRow(r, flagged) {
  return el("tr", { class: flagged.has(r.sipcallerip) ? "flagged" : "", "data-user": r.to_num },
    el("td", {}, fmt.time(r.created_at)), el("td", {}, fmt.time(r.last_at)),
    el("td", {}, r.to_num), el("td", {}, hostport(r.sipcallerip, r.sipcallerport)),
    el("td", {}, r.response ? String(r.response) : "no answer"),
    el("td", { class: "num" }, fmt.int(r.counter)), el("td", {}, r.ua || ""));
}

// -- SIP messages ------------------------------------------------------------------------

async function showSipMessages(params) {
  hashToForm($("#sipmsg-form"), SIPMSG_FILTERS, params);
  const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
  const status = $("#qualify-status");
  try {
    const { sip_messages: pings } = await api(
      `api/sip_messages?${query(params, ["from", "to", "ip", "id_sensor"], { method: "OPTIONS", limit: 1000 })}`);
    const targets = qualifyTargets(pings);
    $("#qualify tbody").replaceChildren(...targets.map(qualifyRow));
    status.textContent = targets.length ? "" : "No OPTIONS ping seen.";
    status.className = "status";
  } catch (error) {
    status.textContent = error.message;
    status.className = "status error";
  }
  const rows = await fill("#sipmsg-status", "#sipmsgs tbody",
    `api/sip_messages?${query(params, SIPMSG_FILTERS, { limit: PAGE, offset })}`,
    "sip_messages", sipmsgRow, "No SIP message matches.");
  pager("sipmsg", "sipmsg", params, offset, rows ? rows.length : 0);
}

// Per target (address and number) the pings newest first: the last one says whether it
// answers now.
function qualifyTargets(pings) {
  const byTarget = new Map();
  for (const p of pings) {
    const key = `${hostport(p.ip_dst, p.port_dst)} ${p.number_dst}`;
    if (!byTarget.has(key)) byTarget.set(key, []);
    byTarget.get(key).push(p);
  }
  return [...byTarget.values()].map((list) => ({
    last: list[0], pings: list.length, ok: list.filter((p) => p.qualify_ok).length }));
}

function qualifyRow(t) {
  const p = t.last;
  const answering = Boolean(p.qualify_ok);
  const state = answering ? "answering" : p.response_number ? "slow or refusing" : "not answering";
  return el("tr", { class: answering ? "" : "flagged", "data-target": p.number_dst },
    el("td", {}, hostport(p.ip_dst, p.port_dst)), el("td", {}, p.number_dst),
    el("td", {}, hostport(p.ip_src, p.port_src)), el("td", {}, fmt.time(p.time)),
    el("td", {}, p.response_number ? `${p.response_number} ${p.response_reason}` : "none"),
    el("td", { class: "num" }, p.response_duration_ms === null ? "" : `${p.response_duration_ms} ms`),
    el("td", { class: "num" }, `${t.ok} / ${t.pings}`),
    el("td", {}, el("span", { class: answering ? "badge ok" : "badge" }, state)));
}

function sipmsgRow(m) {
  return el("tr", { class: m.method === "OPTIONS" && !m.qualify_ok ? "failed-state" : "" },
    el("td", {}, fmt.time(m.time)), el("td", {}, m.method),
    el("td", {}, hostport(m.ip_src, m.port_src)), el("td", {}, hostport(m.ip_dst, m.port_dst)),
    el("td", {}, m.number_dst),
    el("td", {}, m.response_number ? `${m.response_number} ${m.response_reason}` : "none"),
    el("td", { class: "num" }, m.response_duration_ms === null ? "" : `${m.response_duration_ms} ms`),
    el("td", { class: "num" }, fmt.int(m.request_repetition)),
    el("td", {}, m.method === "OPTIONS" ? (m.qualify_ok ? "OK" : "failed") : ""));
}

document.addEventListener("DOMContentLoaded", () => {
  $("#reg-form").addEventListener("submit", (e) => {
    e.preventDefault(); formToHash($("#reg-form"), REG_FILTERS, "registrations"); });
  $("#sipmsg-form").addEventListener("submit", (e) => {
    e.preventDefault(); formToHash($("#sipmsg-form"), SIPMSG_FILTERS, "sipmsg"); });
  for (const button of document.querySelectorAll("button.reset")) {
    button.addEventListener("click", () => { location.hash = `#/${button.dataset.view}`; });
  }
});
