// voipmon web page: a call's quality over time (an SVG chart under the SIP ladder, drawn
// by the central: GET api/cdrs/<id>/quality?format=svg) and its audio (an <audio> player on
// GET api/cdrs/<id>/audio). Uses api, el, $ from app.js; app.js calls showCallMedia(cdr).
"use strict";

let mediaRequest = 0;   // only the latest call's answers are shown

function clearCallMedia() {
  mediaRequest += 1;
  const player = $("#call-audio");
  player.pause();
  player.removeAttribute("src");
  player.load();
  player.hidden = true;
  $("#call-audio-download").hidden = true;
  $("#quality").replaceChildren();
  for (const id of ["#quality-status", "#audio-status"]) {
    $(id).textContent = "";
    $(id).className = "status";
  }
}

function mediaStatus(id, text, error) {
  $(id).textContent = text;
  $(id).className = error ? "status error" : "status";
}

async function errorOf(path) {
  // the <audio> element does not say why it failed: ask the API for its message
  try {
    const response = await fetch(path, { headers: { Accept: "application/json" } });
    if (response.ok) return "the browser cannot play this audio";
    const body = await response.json();
    return body.error || `${response.status} ${response.statusText}`;
  } catch (error) {
    return error.message;
  }
}

async function showQuality(cdr, ticket) {
  mediaStatus("#quality-status", "Computing the quality over time from the call's pcap…");
  const response = await fetch(`api/cdrs/${cdr.id}/quality?format=svg`);
  if (ticket !== mediaRequest) return;
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    mediaStatus("#quality-status", message, true);
    return;
  }
  const text = await response.text();
  if (ticket !== mediaRequest) return;
  const doc = new DOMParser().parseFromString(text, "image/svg+xml");
  const chart = doc.documentElement;
  if (chart.nodeName !== "svg") {
    mediaStatus("#quality-status", "the quality chart could not be read", true);
    return;
  }
  // the page's quality.css styles it; the file's own <style> is for a saved copy
  for (const style of chart.querySelectorAll("style")) style.remove();
  $("#quality").append(document.importNode(chart, true));
  mediaStatus("#quality-status", "");
}

function showAudio(cdr, ticket) {
  const player = $("#call-audio");
  const path = `api/cdrs/${cdr.id}/audio`;
  mediaStatus("#audio-status", "Decoding the call's audio…");
  player.onloadedmetadata = () => {
    if (ticket !== mediaRequest) return;
    mediaStatus("#audio-status", `${player.duration.toFixed(2)} s, caller left, callee right`);
    const link = $("#call-audio-download");
    link.href = `${path}?format=ogg`;
    link.hidden = false;
  };
  player.onerror = async () => {
    if (ticket !== mediaRequest || !player.getAttribute("src")) return;
    player.hidden = true;
    mediaStatus("#audio-status", await errorOf(path), true);
  };
  player.hidden = false;
  player.src = path;
}

function showCallMedia(cdr) {
  clearCallMedia();
  const ticket = mediaRequest;
  if (!cdr.pcap_on || !cdr.rtp_pcap) {
    const why = cdr.pcap_on ? "no RTP was saved for this call" : "this call has no pcap";
    mediaStatus("#quality-status", `No quality chart: ${why}.`);
    mediaStatus("#audio-status", `No audio: ${why}.`);
    return;
  }
  showQuality(cdr, ticket).catch((error) => {
    if (ticket === mediaRequest) mediaStatus("#quality-status", error.message, true);
  });
  showAudio(cdr, ticket);
}

window.addEventListener("hashchange", () => {
  if (!location.hash.startsWith("#/call/")) clearCallMedia();
});
