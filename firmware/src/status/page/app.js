// talkie status page: no external assets, no inline script (CSP), text
// only through textContent (transcripts and log lines are untrusted).
"use strict";
const $ = (id) => document.getElementById(id);
const seen = { states: new Set(), levelEvents: 0, levelMin: 0, levelMax: -200, tech: false };

function rows(id, pairs) {
  const body = $(id);
  body.replaceChildren(...pairs.filter((p) => p[1] !== undefined).map(([k, v]) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td"); a.textContent = k;
    const b = document.createElement("td"); b.textContent = v === null ? "–" : String(v);
    tr.append(a, b);
    return tr;
  }));
}

function items(id, list, fmt) {
  $(id).replaceChildren(...list.map((x) => {
    const li = document.createElement("li");
    li.textContent = fmt(x);
    return li;
  }));
}

function ago(unixMs) {
  if (!unixMs) return "never";
  const s = Math.max(0, Math.round((Date.now() - unixMs) / 1000));
  return s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return (d ? `${d} d ` : "") + `${h} h ${m} min`;
}

function showLevel(rms, peak) {
  const pct = Math.max(0, Math.min(100, (rms + 60) / 60 * 100));
  const bar = $("level-bar");
  bar.style.width = pct.toFixed(1) + "%";
  bar.classList.toggle("hot", peak > -3);
  $("level").textContent = `${rms.toFixed(1)} dBFS`;
  $("peak").textContent = `${peak.toFixed(1)} dBFS`;
  bar.parentElement.dataset.level = rms.toFixed(1);
}

function showState(state) {
  $("state").textContent = state;
  $("state").dataset.state = state;
  seen.states.add(state);
  document.body.dataset.statesSeen = [...seen.states].join(",");
}

function render(s) {
  $("device").textContent = s.device_id;
  $("version").textContent = `firmware ${s.version}`;
  $("uptime").textContent = duration(s.uptime_s);
  const ok = s.ready && s.health.every((h) => h.ok);
  $("overall").dataset.ok = String(ok);
  $("overall").textContent = ok ? "healthy" : "attention needed";
  items("health", s.health, (h) => `${h.ok ? "✔" : "✘"} ${h.name}${h.ok ? "" : ": " + h.reason}`);
  [...$("health").children].forEach((li, i) => li.className = s.health[i].ok ? "ok" : "bad");
  showState(s.state);
  const m = s.microphone;
  $("mic-source").textContent = `${m.source} · ${m.format || "format not negotiated yet"}`;
  showLevel(m.level_rms_dbfs, m.level_peak_dbfs);
  rows("mic", [["state", m.state], ["xruns", m.xruns], ["dropped frames", m.frames_dropped],
    ["reopen attempts", m.reopen_attempts], ["frames captured", m.frames_captured]]);
  const p = s.push_to_talk;
  rows("button", [["last press", ago(p.last_press_unix_ms)], ["presses since start", p.presses],
    ["presses today", p.presses_today], ["too short", p.too_short], ["busy rejected", p.busy_rejected]]);
  const c = s.stt;
  const timings = c ? c.timings.map((t) => `${t.precision}/${t.threads} ${t.pruned ? ">" : ""}${Math.round(t.total_ms)} ms`).join(", ") : undefined;
  rows("stt", [["model", c ? c.model : "loading"], ["precision, threads", c ? `${c.precision}, ${c.threads}${c.decoder_threads !== c.threads || c.decoder_precision !== c.precision ? ` (decoder ${c.decoder_precision}, ${c.decoder_threads})` : ""} (${c.source}: ${c.reason})` : "loading"],
    ["calibration timings", c && c.timings.length ? timings : undefined],
    ["CPU", c ? `${c.cpu.model} · ${c.cpu.cores} cores · ${c.cpu.features.join(" ") || "no SIMD features known"} · tract ${c.cpu.tract_isa} · vocabulary kernel ${c.cpu.vocab_kernel}${c.cpu.vocab_threads > 1 ? ` on ${c.cpu.vocab_threads} threads` : ""}${c.cpu.vocab_huge_kb > 0 ? `, ${(c.cpu.vocab_huge_kb / 1024).toFixed(0)} MB in huge pages` : ""}${Object.keys(c.cpu.vocab_kernel_us || {}).length ? " (" + Object.entries(c.cpu.vocab_kernel_us).map(([k, v]) => `${k} ${(v / 1000).toFixed(2)} ms`).join(", ") + " per step)" : ""}` : undefined],
    ["transcripts", p.transcripts], ["no speech", p.no_speech], ["failures", p.stt_failures],
    ["last release → text", p.release_to_text_ms_last === null ? null : `${p.release_to_text_ms_last} ms`],
    ["p95 release → text", p.release_to_text_ms_p95_bucket === null ? null : `≤ ${p.release_to_text_ms_p95_bucket} ms`],
    ["speculative recognition", ((q) => q.enabled ? `${q.hits} hits, ${q.misses} misses, ${q.abandoned} abandoned of ${q.runs} runs; ${q.wasted_ms} ms spent on unused runs` : "off")(p.speculative)]]);
  items("models", s.models, (x) => `${x.file} (${x.precision || x.kind}) sha256 ${x.sha256.slice(0, 12)}…`);
  const b = s.board || {};
  const na = "not available";
  const gib = (x) => x === null || x === undefined ? na : `${(x / 1073741824).toFixed(2)} GiB`;
  const extra = [];
  if (s.time && s.time.warning) extra.push({ name: "clock", reason: s.time.warning });
  const reach = s.agent && s.agent.reachability;
  if (reach && reach.cert_warning) extra.push({ name: "certificate", reason: reach.cert_warning });
  items("board-warnings", (b.warnings || []).concat(extra), (w) => `⚠ ${w.name}: ${w.reason}`);
  [...$("board-warnings").children].forEach((li) => li.className = "bad");
  const t = b.throttled;
  rows("board", [["CPU temperature", b.cpu_temp_c == null ? na : `${b.cpu_temp_c.toFixed(1)} °C`],
    ["power / throttling", t ? `under-voltage ${t.under_voltage_now ? "NOW" : t.under_voltage_since_boot ? "since boot" : "no"}, throttled ${t.throttled_now ? "NOW" : t.throttled_since_boot ? "since boot" : "no"} (${"0x" + t.raw.toString(16)})` : na],
    ["memory available", b.mem_available_bytes == null ? na : `${gib(b.mem_available_bytes)} of ${gib(b.mem_total_bytes)}`],
    ["outbox disk free", b.disk_free_bytes == null ? na : `${gib(b.disk_free_bytes)} of ${gib(b.disk_total_bytes)}`],
    ["open files", b.fds_open == null ? na : `${b.fds_open} of ${b.fds_max}`],
    ["load average", b.load_avg ? b.load_avg.map((x) => x.toFixed(2)).join(" ") : na],
    ["board up", b.uptime_s == null ? na : duration(b.uptime_s)],
    ["clock", !s.time || s.time.synchronized == null ? na : (s.time.synchronized ? `synchronized (±${s.time.max_error_ms.toFixed(0)} ms)` : "NOT synchronized")],
    ["service starts (24 h)", s.runs ? s.runs.starts_24h : na],
    ["previous run ended", s.runs ? (s.runs.previous_end || "first start") : na],
    ["update slot (RAUC)", ((u) => u.rauc ? `${u.rauc.booted_slot || "?"} booted, ${u.rauc.booted_boot_status || "status unknown"}, bundle ${u.rauc.booted_bundle_version || "unknown"}${u.rauc.next_boot ? `; next boot from ${u.rauc.next_boot}` : ""}` : u.rauc_error ? `error: ${u.rauc_error}` : na)(s.updates || {})],
    ["artifact (Mender)", ((u) => u.mender_artifact || (u.mender_error ? `error: ${u.mender_error}` : na))(s.updates || {})]]);
  const a = s.agent;
  const ms = (v) => v == null ? "–" : `${v.toFixed(0)} ms`;
  const r = a && a.reachability;
  const reachRow = !r ? "not checked yet" : r.failed_step
    ? `FAILS at ${r.failed_step}: ${r.error}`
    : `ok: DNS ${ms(r.dns_ms)}, connect ${ms(r.connect_ms)}, ${r.tls ? "TLS + " : ""}request ${ms(r.request_ms)} (HTTP ${r.http_status})`;
  rows("agent", a ? [["breaker", a.breaker], ["reachability", reachRow],
    ["certificate", !r || !r.tls ? "–" : r.cert_days_left == null ? "unknown" : `valid for ${r.cert_days_left} more days`],
    ["last HTTP status", a.last_http_status == null ? "–" : a.last_http_status],
    ["clock vs agent", a.clock_offset_s == null ? "–" : `${a.clock_offset_s.toFixed(0)} s`],
    ["delivery", a.paused_on_status ? `PAUSED: the agent answers HTTP ${a.paused_on_status} (${a.paused_on_status === 404 ? "check agent.url" : "check agent.token"}); nothing is lost` : "flowing"],
    ["outbox depth", a.outbox_depth],
    ["oldest waiting", a.outbox_oldest_age_s === null ? "–" : `${a.outbox_oldest_age_s} s`],
    ["delivered", a.delivered], ["dead-lettered", a.dead_lettered],
    ["dead letters kept", a.dead_letters_kept], ["retries", a.retries],
    ["last error", a.last_error], ["last reply", a.last_reply]] : [["agent", "not configured"]]);
  const rec = s.recordings || {};
  $("recording-banner").hidden = !rec.enabled;
  if (rec.enabled) $("recording-banner").textContent =
    `Recording for debugging is ON: the last ${rec.keep_utterances} utterances (what visitors say) are kept on this device for up to ${rec.keep_hours} h (${rec.kept} kept now).`;
  const tech = s.access === "technician";
  // A session that ended (expiry, a restart, a token change) is shown as
  // such; the server already told the browser to drop the cookie, so the
  // page polls anonymously instead of failing token checks.
  if (seen.tech && !tech && s.login_available) {
    $("login-error").hidden = false;
    $("login-error").textContent = "Your session ended (expired, or the service restarted): log in again.";
  }
  seen.tech = tech;
  $("tech").hidden = !tech;
  $("login-card").hidden = tech || !s.login_available;
  if (tech) {
    if (s.config) $("config").textContent = JSON.stringify(s.config, null, 2);
    loadTech();
  }
}

// A canvas sized to its box (sharp on any screen), with its 2D context.
function canvas(id) {
  const c = $(id);
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, c.clientWidth), h = Number(c.getAttribute("height"));
  if (c.width !== Math.round(w * dpr)) { c.width = Math.round(w * dpr); c.style.height = `${h}px`; }
  const g = c.getContext("2d");
  g.setTransform(c.width / w, 0, 0, c.width / w, 0, 0);
  g.clearRect(0, 0, w, h);
  return { g, w, h };
}
const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

// Microphone level over the last minute: RMS line, peak faint, −50 dBFS dashed.
function drawLevels(points) {
  const { g, w, h } = canvas("level-chart");
  const y = (db) => h - Math.max(0, Math.min(1, (db + 90) / 90)) * h;
  g.setLineDash([4, 4]); g.strokeStyle = "#8888"; g.beginPath(); g.moveTo(0, y(-50)); g.lineTo(w, y(-50)); g.stroke(); g.setLineDash([]);
  const n = points.length, step = w / 119;
  const line = (k, color) => {
    g.strokeStyle = color; g.beginPath();
    points.forEach((p, i) => { const x = w - (n - 1 - i) * step; i ? g.lineTo(x, y(p[k])) : g.moveTo(x, y(p[k])); });
    g.stroke();
  };
  g.lineWidth = 1; line(2, "#8886"); g.lineWidth = 2; line(1, css("--ok"));
  document.body.dataset.levelPoints = String(n);
}

// Release → text per transcript, oldest left; speculative hits green.
function drawReleaseToText(list) {
  const { g, w, h } = canvas("rtt-chart");
  const max = Math.max(100, ...list.map((t) => t.release_to_text_ms));
  const bw = w / 50;
  list.slice(-50).forEach((t, i) => {
    const bh = (t.release_to_text_ms / max) * (h - 4);
    g.fillStyle = t.speculative === "hit" ? css("--ok") : "#888";
    g.fillRect(i * bw + 1, h - bh, Math.max(1, bw - 2), bh);
  });
  $("rtt-max").textContent = list.length ? `top of chart: ${Math.round(max)} ms` : "no transcripts yet";
  document.body.dataset.rttBars = String(Math.min(50, list.length));
}

// The last utterance: peaks mirrored, VAD speech shaded, press and release marked.
function drawWave(t) {
  const { g, w, h } = canvas("wave");
  if (!t) { $("wave-caption").textContent = "no utterance yet"; return; }
  const x = (ms) => (ms / Math.max(1, t.audio_ms)) * w;
  g.fillStyle = "#1a7f3733";
  t.speech_ms.forEach(([a, b]) => g.fillRect(x(a), 0, Math.max(1, x(b) - x(a)), h));
  g.fillStyle = css("--ok");
  const bw = w / t.peaks.length;
  t.peaks.forEach((p, i) => { const bh = Math.max(1, p * (h - 8)); g.fillRect(i * bw, (h - bh) / 2, Math.max(1, bw - 0.5), bh); });
  g.lineWidth = 2;
  [[t.press_ms, "press", "#1565c0"], [t.release_ms, t.auto_stopped ? "auto-stop" : "release", css("--bad")]].forEach(([ms, label, color]) => {
    const px = Math.min(w - 1, Math.max(1, x(ms)));
    g.strokeStyle = color; g.beginPath(); g.moveTo(px, 0); g.lineTo(px, h); g.stroke();
    g.fillStyle = color; g.font = "11px system-ui"; g.textAlign = px > w / 2 ? "right" : "left";
    g.fillText(label, px + (px > w / 2 ? -4 : 4), 12);
  });
  const speech = t.speech_ms.reduce((a, [s, e]) => a + e - s, 0);
  $("wave-caption").textContent = `#${t.id}: ${(t.audio_ms / 1000).toFixed(1)} s captured (${t.press_ms} ms pre-roll), ${(speech / 1000).toFixed(1)} s of speech in ${t.speech_ms.length} region(s) shaded`;
  document.body.dataset.wavePeaks = String(t.peaks.length);
}

async function loadCharts() {
  try {
    const r = await fetch("/api/v1/charts", { cache: "no-store" });
    if (!r.ok) return;
    const c = await r.json();
    drawLevels(c.level_history);
    drawReleaseToText(c.release_to_text);
    if (!$("tech").hidden) drawWave(c.last_utterance);
    document.body.dataset.chartsDrawn = String(Number(document.body.dataset.chartsDrawn || 0) + 1);
  } catch (e) { /* the next poll retries */ }
}

async function loadRecordings() {
  const r = await fetch("/api/v1/recordings");
  $("recordings-card").hidden = !r.ok;
  if (!r.ok) return;
  const list = (await r.json()).recordings;
  const ol = $("recordings");
  ol.replaceChildren(...list.map((e) => {
    const li = document.createElement("li");
    const t = e.meta && e.meta.transcript;
    const a = document.createElement("a");
    a.href = `/api/v1/recordings/${encodeURIComponent(e.name)}`; a.download = `${e.name}.wav`;
    a.textContent = `${new Date(e.at_ms).toLocaleString()} · ${(e.bytes / 1024).toFixed(0)} KiB`;
    const del = document.createElement("button");
    del.type = "button"; del.textContent = "Delete";
    del.addEventListener("click", async () => { await fetch(a.href, { method: "DELETE" }); loadRecordings(); });
    li.append(a, document.createTextNode(t ? ` · “${t.text}”` : ""), del);
    return li;
  }));
  if (!list.length) ol.replaceChildren(Object.assign(document.createElement("li"), { textContent: "none kept yet" }));
}

async function loadTech() {
  try {
    loadRecordings();
    const [t, l] = await Promise.all([fetch("/api/v1/transcripts"), fetch("/api/v1/logs")]);
    if (t.ok) items("transcripts", (await t.json()).transcripts.slice().reverse(),
      (x) => `${new Date(x.started_at_ms).toLocaleTimeString()} · ${Math.round(x.release_to_text_ms)} ms · ${x.text}${x.reply ? "  → " + x.reply : ""}`);
    if (l.ok) items("problems", (await l.json()).problems.slice().reverse(),
      (x) => `${new Date(x.at_ms).toLocaleTimeString()} ${x.level} ${x.target}: ${x.message}`);
  } catch (e) { /* the next poll retries */ }
}

async function poll() {
  try {
    const r = await fetch("/api/v1/status", { cache: "no-store" });
    render(await r.json());
  } catch (e) {
    $("overall").dataset.ok = "false";
    $("overall").textContent = "device not answering";
  }
}

function live() {
  const es = new EventSource("/api/v1/events");
  es.addEventListener("open", () => { $("live").textContent = "live"; });
  es.addEventListener("error", () => { $("live").textContent = "live: reconnecting"; });
  es.addEventListener("level", (ev) => {
    const d = JSON.parse(ev.data);
    showLevel(d.rms_dbfs, d.peak_dbfs);
    seen.levelEvents += 1;
    seen.levelMin = Math.min(seen.levelMin, d.rms_dbfs);
    seen.levelMax = Math.max(seen.levelMax, d.rms_dbfs);
    document.body.dataset.levelEvents = String(seen.levelEvents);
    document.body.dataset.levelRange = (seen.levelMax - seen.levelMin).toFixed(1);
    if (d.state) showState(d.state);
  });
  es.addEventListener("state", (ev) => showState(JSON.parse(ev.data).state));
  // Every debounced edge as it happens: press the button with the page open.
  es.addEventListener("button", (ev) => {
    const d = JSON.parse(ev.data);
    if (d.lagged) { $("button-edges").textContent = `(${d.lagged} edges not shown)`; return; }
    $("button-now").textContent = d.down ? "PRESSED" : "released";
    $("button-now").dataset.down = String(d.down);
    $("button-edges").textContent =
      `${d.presses} presses, ${d.releases} releases since start; last edge ${new Date(d.unix_ms).toLocaleTimeString()}`;
    document.body.dataset.buttonEdges = String(d.presses + d.releases);
  });
}

$("recordings-delete-all").addEventListener("click", async () => {
  if (!window.confirm("Delete every kept recording?")) return;
  await fetch("/api/v1/recordings", { method: "DELETE" });
  loadRecordings();
});
$("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const r = await fetch("/login", { method: "POST", body: new URLSearchParams(new FormData(ev.target)) });
  if (r.ok) { $("login-error").hidden = true; ev.target.reset(); poll(); return; }
  $("login-error").hidden = false;
  $("login-error").textContent = (await r.json().catch(() => ({}))).error || `login failed (${r.status})`;
});
$("logout").addEventListener("click", async () => { await fetch("/logout", { method: "POST" }); poll(); });
$("test-leds").addEventListener("click", async () => { await fetch("/api/v1/test/leds", { method: "POST" }); });
$("restart").addEventListener("click", async () => {
  if (!window.confirm("Restart the talkie service now? A press in progress is finished first; the kiosk is back in a few seconds.")) return;
  const r = await fetch("/api/v1/restart", { method: "POST" });
  const body = await r.json().catch(() => ({}));
  $("restart-result").textContent = r.ok ? "restarting…" : (body.error || `HTTP ${r.status}`);
});

poll();
setInterval(poll, 2000);
loadCharts();
setInterval(loadCharts, 2000);
live();
