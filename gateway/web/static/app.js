// The gateway's status page: live through /api/events (server-sent events), /api/status polled
// when the stream is not available, actions through the JSON API. No library, no build step.
// Every text people read is in STRINGS below (one table per language) so a translation is one
// more table; nothing else in this file holds words.
"use strict";

const STRINGS = {
  en: {
    appName: "Remote support gateway",
    version: "version {version}",
    live: "Live",
    polling: "Updating every few seconds",
    lost: "Connection to the gateway lost",
    lostBanner: "This page cannot reach the gateway. What you see may be out of date. Trying again…",
    titleNobody: "{id}: nobody connected",
    titleConnections: { one: "1 remote connection · {id}", other: "{n} remote connections · {id}" },
    loginTitle: "Log in",
    loginHelp: "This page is opened from the plant network. Enter the operator password to see and control remote access.",
    passwordLabel: "Operator password",
    loginButton: "Log in",
    logout: "Log out",
    wrongPassword: "That is not the operator password.",
    lockedOut: "Too many wrong passwords. Try again in {seconds} seconds.",
    readOnly: "You can look but not change anything from here: no operator password is set. On the gateway, run: gateway operator-password -c gateway.toml",
    tunnelTitle: "Connection to the vendor",
    tunnelUp: "Ready: remote support is possible",
    tunnelDown: "Not connected: remote support is not possible right now",
    tunnelConnecting: "Connecting to the vendor…",
    relayLabel: "Vendor server",
    sinceLabel: "Since",
    rttLabel: "Round trip",
    rttValue: "{ms} ms",
    unknown: "not known",
    lastError: "Last problem: {error}",
    checkFailed: "{name}: {detail}",
    checkRemedy: "What to do: {remedy}",
    modeTitle: "Remote access",
    modeLegend: "Who may connect",
    mode_disabled: "Off",
    mode_disabled_help: "Nobody can connect. Live connections are cut at once.",
    mode_attended: "Ask me",
    mode_attended_help: "An engineer can connect only after you approve, or with a code you give.",
    mode_unattended: "Always on",
    mode_unattended_help: "Authorised engineers connect without asking. Every connection is shown here.",
    switchOff: "Switch remote access off",
    switchedOff: "Remote access is off.",
    modeSet: "Remote access is now: {mode}.",
    requestsTitle: "Waiting for your answer",
    requestsNone: "Nobody is asking to connect.",
    requestHeading: "{engineer} asks to connect",
    requestReason: "Reason: {reason}",
    noReason: "No reason given",
    requestWaiting: "Asked {ago} · wants {targets}",
    lengthLabel: "For how long",
    targetsLegend: "To which machines",
    permissionLegend: "What they may do",
    perm_view: "Look only",
    perm_full: "Full control",
    approve: "Approve",
    denyReasonLabel: "Reason for saying no (optional)",
    deny: "Deny",
    approved: "{engineer} may connect now.",
    denied: "You said no to {engineer}.",
    codeTitle: "Session code",
    codeHelp: "Give an engineer a one-time code over the phone. It works once, within 10 minutes.",
    codeMinutesLabel: "Session length",
    codeButton: "Create a session code",
    codeValid: "Read this out to the engineer. It works once, for {left} more.",
    codeExpired: "This code has expired. Create a new one if it is still needed.",
    sessionsTitle: "Who is connected now",
    sessionsNone: "Nobody is connected.",
    sessionHeading: "{engineer}",
    sessionMeta: "{permission} on {targets} · started {ago} · {ends}",
    sessionEnds: "ends in {left}",
    sessionNoEnd: "no end time (always-on access)",
    sessionApprovedBy: "Approved by {who}",
    sessionApprovedByCode: "Came in with a session code made by {who}",
    sessionNoConnections: "Not using any machine at this moment.",
    connectionLine: "{target} · since {ago} ({duration})",
    connectionBytes: "Received by engineer: {from} · sent to machine: {to}",
    end: "End this session",
    ended: "The session of {engineer} has ended.",
    endReason: "ended on the status page",
    eventsTitle: "Recent events",
    eventsNone: "Nothing has happened yet.",
    eventBy: "by {who}",
    event_refused: "refused",
    minutes: { one: "1 minute", other: "{n} minutes" },
    hours: { one: "1 hour", other: "{n} hours" },
    justNow: "just now",
    secondsAgo: "{n} s ago",
    minutesAgo: "{n} min ago",
    hoursAgo: "{n} h ago",
    daysAgo: { one: "1 day ago", other: "{n} days ago" },
    durSeconds: "{s} s",
    durMinutes: "{m} min {s} s",
    durHours: "{h} h {m} min",
    all: "all machines",
    failed: "That did not work: {reason}",
    footer: "This page updates by itself. Times are shown as on this computer's clock.",
    ev: {
      "mode.changed": "Remote access changed from {old} to {new}",
      "session.requested": "{engineer} asked to connect",
      "session.approved": "Session approved for {engineer}",
      "session.denied": "Request of {engineer} denied",
      "code.created": "A session code was created",
      "code.used": "{engineer} used a session code",
      "code.failed": "A wrong session code was tried",
      "code.locked": "Session codes locked after wrong tries",
      "session.started": "Session started for {engineer}",
      "session.changed": "Session of {engineer} changed",
      "session.ended": "Session of {engineer} ended",
      "stream.opened": "{engineer} connected to {target}",
      "stream.closed": "{engineer} disconnected from {target}",
      "stream.refused": "A connection to {target} was refused",
      "operator.login": "Operator logged in",
      "operator.login_failed": "Wrong operator password",
      "operator.locked_out": "Operator login locked after wrong passwords",
      "operator.logout": "Operator logged out",
      "operator.password_set": "Operator password set",
      "limit.reached": "A connection limit was reached",
      "audit.lost": "Some audit records could not be written",
      other: "{event}",
    },
  },
};

const LANG = STRINGS[(navigator.language || "en").slice(0, 2)] ? (navigator.language || "en").slice(0, 2) : "en";
const S = STRINGS[LANG];

function t(key, vars = {}) {
  let text = key.split(".").reduce((o, k) => (o == null ? o : o[k]), S);
  if (text && typeof text === "object") {
    text = vars.n === 1 ? text.one : text.other;
  }
  if (typeof text !== "string") return key;
  return fill(text, vars);
}

// -- formatting ------------------------------------------------------------------------------

function parseTime(text) {
  if (!text) return null;
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? null : ms;
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 5) return t("justNow");
  if (s < 60) return t("secondsAgo", { n: s });
  if (s < 3600) return t("minutesAgo", { n: Math.floor(s / 60) });
  if (s < 86400) return t("hoursAgo", { n: Math.floor(s / 3600) });
  return t("daysAgo", { n: Math.floor(s / 86400) });
}

function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return t("durSeconds", { s });
  if (s < 3600) return t("durMinutes", { m: Math.floor(s / 60), s: s % 60 });
  return t("durHours", { h: Math.floor(s / 3600), m: Math.floor((s % 3600) / 60) });
}

function clockLeft(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}

function bytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = Number(n) || 0;
  let i = 0;
  while (value >= 1000 && i < units.length - 1) {
    value /= 1000;
    i += 1;
  }
  const shown = i === 0 ? String(value) : value.toFixed(value < 10 ? 2 : value < 100 ? 1 : 0);
  return `${shown} ${units[i]}`;
}

function exact(ms) {
  return new Date(ms).toLocaleString(LANG);
}

function timeEl(text, label) {
  const el = document.createElement("time");
  const ms = parseTime(text);
  if (ms !== null) {
    el.dateTime = new Date(ms).toISOString();
    el.title = exact(ms);
    el.dataset.ago = String(ms);
    el.textContent = label ? label(ms) : ago(ms);
  }
  return el;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

const $ = (id) => document.getElementById(id);

// -- talking to the gateway --------------------------------------------------------------------

const state = {
  auth: null,
  status: null,
  lastHeard: 0,
  source: null,
  pollTimer: null,
  lost: false,
  code: null,
};

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (state.auth && state.auth.csrf) headers["X-CSRF-Token"] = state.auth.csrf;
  }
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  let answer = null;
  try {
    answer = await response.json();
  } catch (e) {
    answer = null;
  }
  return { ok: response.ok, status: response.status, answer };
}

let noticeTimer = null;

function notify(text, bad = false) {
  const box = $("notice");
  box.textContent = text;
  box.className = bad ? "banner banner-bad" : "banner";
  box.hidden = !text;
  clearTimeout(noticeTimer);
  if (text && !bad) noticeTimer = setTimeout(() => notify(""), 10000); // done: no need to stay
}

async function act(path, body, done) {
  const result = await api("POST", path, body);
  if (result.ok) {
    notify(done(result.answer));
    refresh();
  } else {
    const reason = (result.answer && result.answer.reason) || `HTTP ${result.status}`;
    notify(t("failed", { reason }), true);
    if (result.status === 403 || result.status === 401) checkAuth();
  }
  return result;
}

function heard(status) {
  state.lastHeard = Date.now();
  setLost(false);
  render(status);
}

function startStream() {
  if (state.source || typeof EventSource === "undefined") {
    if (!state.source) startPolling();
    return;
  }
  const source = new EventSource("/api/events");
  state.source = source;
  source.addEventListener("status", (event) => {
    stopPolling();
    $("link-state").textContent = t("live");
    heard(JSON.parse(event.data));
  });
  source.addEventListener("logged-out", () => {
    stopStream();
    checkAuth();
  });
  source.onerror = () => {
    // The browser retries by itself; meanwhile poll, so a stream refused (too many readers)
    // or cut by a proxy still leaves a working page.
    startPolling();
  };
}

function stopStream() {
  if (state.source) {
    state.source.close();
    state.source = null;
  }
}

function startPolling() {
  if (state.pollTimer) return;
  const poll = async () => {
    await refresh();
    state.pollTimer = setTimeout(poll, 2000);
  };
  state.pollTimer = setTimeout(poll, 0);
}

function stopPolling() {
  if (state.pollTimer) {
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
  }
}

async function refresh() {
  try {
    const result = await api("GET", "/api/status");
    if (result.ok && result.answer) {
      if (!state.source || state.source.readyState !== 1) $("link-state").textContent = t("polling");
      heard(result.answer);
    } else if (result.status === 401) {
      checkAuth();
    }
  } catch (e) {
    setLost(true); // the daemon did not answer at all
  }
}

function setLost(lost) {
  if (state.lost === lost) return;
  state.lost = lost;
  $("lost").hidden = !lost;
  $("lost").textContent = lost ? t("lostBanner") : "";
  document.body.classList.toggle("is-lost", lost);
  const link = $("link-state");
  link.classList.toggle("lost", lost);
  link.classList.toggle("live", !lost);
  if (lost) link.textContent = t("lost");
  updateTitle();
}

setInterval(() => {
  // Silence for 20 s (the stream sends at least every 15 s) is a lost connection.
  if (state.lastHeard && Date.now() - state.lastHeard > 20000) {
    setLost(true);
    startPolling();
  }
  tickTimes();
}, 1000);

// -- login -------------------------------------------------------------------------------------

async function checkAuth() {
  let result;
  try {
    result = await api("GET", "/api/auth");
  } catch (e) {
    setLost(true);
    setTimeout(checkAuth, 3000);
    return;
  }
  state.auth = result.answer || {};
  const auth = state.auth;
  $("login").hidden = !auth.login_required;
  $("panel").hidden = !!auth.login_required;
  $("logout").hidden = !auth.logged_in;
  $("readonly").hidden = !auth.how_to_set;
  $("readonly").textContent = auth.how_to_set ? t("readOnly") : "";
  document.body.classList.toggle("read-only", !auth.can_act);
  if (auth.login_required) {
    stopStream();
    stopPolling();
    state.lastHeard = 0;
    if (auth.locked_until) showLocked(auth.locked_until);
    $("password").focus();
    return;
  }
  startStream();
  refresh();
}

function showLocked(until) {
  const seconds = Math.max(1, Math.ceil((parseTime(until) - Date.now()) / 1000));
  $("login-error").textContent = t("lockedOut", { seconds });
}

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  const button = $("login-button");
  button.disabled = true;
  try {
    const result = await api("POST", "/api/login", { password: $("password").value });
    if (result.ok) {
      $("password").value = "";
      await checkAuth();
    } else if (result.status === 429 && result.answer && result.answer.locked_until) {
      showLocked(result.answer.locked_until);
    } else if (result.status === 401) {
      $("login-error").textContent = t("wrongPassword");
    } else {
      $("login-error").textContent = t("failed", { reason: (result.answer || {}).reason || result.status });
    }
  } finally {
    button.disabled = false;
  }
}

async function logout() {
  await api("POST", "/api/logout", {});
  stopStream();
  stopPolling();
  checkAuth();
}

// -- rendering -----------------------------------------------------------------------------------

const MODES = ["disabled", "attended", "unattended"];
const LENGTHS = [30, 60, 120, 240, 480];

function lengthOptions(select, chosen) {
  for (const m of LENGTHS) {
    const label = m < 60 ? t("minutes", { n: m }) : t("hours", { n: m / 60 });
    select.append(el("option", { value: String(m), text: label, selected: m === chosen }));
  }
}

function permissionChoices(fieldset, name, chosen) {
  for (const p of ["view", "full"]) {
    const id = `${name}-${p}`;
    const input = el("input", { type: "radio", name, id, value: p, checked: p === chosen });
    fieldset.append(el("label", { for: id }, input, el("span", { text: t(`perm_${p}`) })));
  }
}

function setupStatic() {
  document.documentElement.lang = LANG;
  document.title = t("appName");
  $("heading").textContent = t("appName");
  $("logout").textContent = t("logout");
  $("logout").addEventListener("click", logout);
  $("login-title").textContent = t("loginTitle");
  $("login-help").textContent = t("loginHelp");
  $("password-label").textContent = t("passwordLabel");
  $("login-button").textContent = t("loginButton");
  $("login-form").addEventListener("submit", login);
  $("tunnel-title").textContent = t("tunnelTitle");
  $("relay-label").textContent = t("relayLabel");
  $("since-label").textContent = t("sinceLabel");
  $("rtt-label").textContent = t("rttLabel");
  $("mode-title").textContent = t("modeTitle");
  $("mode-legend").textContent = t("modeLegend");
  // One button per mode (not radio buttons: arrow keys would switch access on the way past).
  const mode = $("mode");
  for (const m of MODES) {
    const button = el(
      "button",
      { type: "button", id: `mode-${m}`, class: `mode mode-${m}`, "aria-pressed": "false" },
      el("span", { class: "mode-name", text: t(`mode_${m}`) }),
      el("small", { text: t(`mode_${m}_help`) }),
    );
    button.addEventListener("click", () => {
      if (button.getAttribute("aria-pressed") !== "true") setMode(m);
    });
    mode.append(button);
  }
  $("switch-off").textContent = t("switchOff");
  $("switch-off").addEventListener("click", () => setMode("disabled"));
  $("requests-title").textContent = t("requestsTitle");
  $("requests-none").textContent = t("requestsNone");
  $("code-title").textContent = t("codeTitle");
  $("code-help").textContent = t("codeHelp");
  $("code-minutes-label").textContent = t("codeMinutesLabel");
  lengthOptions($("code-minutes"), 60);
  $("code-permission-legend").textContent = t("permissionLegend");
  permissionChoices($("code-permission"), "code-perm", "full");
  $("code-button").textContent = t("codeButton");
  $("code-form").addEventListener("submit", createCode);
  $("sessions-title").textContent = t("sessionsTitle");
  $("sessions-none").textContent = t("sessionsNone");
  $("events-title").textContent = t("eventsTitle");
  $("events-none").textContent = t("eventsNone");
  $("footer").textContent = t("footer");
}

function setMode(mode) {
  act("/api/access", { mode }, () => (mode === "disabled" ? t("switchedOff") : t("modeSet", { mode: t(`mode_${mode}`) })));
}

async function createCode(event) {
  event.preventDefault();
  const minutes = Number($("code-minutes").value);
  const chosen = document.querySelector("input[name=code-perm]:checked");
  const permission = chosen ? chosen.value : "full";
  const result = await act("/api/codes", { minutes, permission }, () => "");
  if (result.ok && result.answer && result.answer.code) {
    // Only the code just made, only in this page's memory: never stored, never shown again.
    state.code = { code: String(result.answer.code), expires: parseTime(result.answer.expires) };
    notify("");
    showCode();
  }
}

function showCode() {
  const shown = $("code-shown");
  if (!state.code) {
    shown.hidden = true;
    return;
  }
  shown.hidden = false;
  const code = state.code.code;
  $("code-value").textContent = code.length === 6 ? `${code.slice(0, 3)} ${code.slice(3)}` : code;
  const left = (state.code.expires - Date.now()) / 1000;
  if (left <= 0) {
    $("code-value").textContent = "";
    $("code-countdown").textContent = t("codeExpired");
    state.code = null;
  } else {
    $("code-countdown").textContent = t("codeValid", { left: clockLeft(left) });
  }
}

function tickTimes() {
  for (const node of document.querySelectorAll("time[data-ago]")) {
    const ms = Number(node.dataset.ago);
    if (node.dataset.kind === "duration") node.textContent = duration((Date.now() - ms) / 1000);
    else node.textContent = ago(ms);
  }
  if (state.code) showCode();
}

function updateTitle() {
  const status = state.status;
  const id = status ? status.id : t("appName");
  const n = status ? status.connections.length : 0;
  document.title = n > 0 ? t("titleConnections", { n, id }) : t("titleNobody", { id });
  $("favicon").setAttribute("href", n > 0 ? "/favicon-live.svg" : "/favicon.svg");
}

function render(status) {
  state.status = status;
  $("panel").hidden = false;
  $("gateway-id").textContent = status.id;
  $("gateway-version").textContent = t("version", { version: status.version });
  renderTunnel(status.tunnel);
  renderChecks(status.checks);
  renderMode(status.access.mode);
  renderRequests(status.access);
  renderSessions(status);
  renderEvents(status.recent_events || []);
  updateTitle();
  const canAct = !state.auth || state.auth.can_act;
  for (const b of document.querySelectorAll("#panel button, #panel input, #panel select")) {
    b.disabled = !canAct;
  }
}

function renderTunnel(tunnel) {
  const line = $("tunnel-state");
  const up = tunnel.state === "up";
  line.textContent = up ? t("tunnelUp") : tunnel.state === "connecting" ? t("tunnelConnecting") : t("tunnelDown");
  line.className = `state ${up ? "up" : "down"}`;
  $("tunnel-relay").textContent = tunnel.relay;
  $("tunnel-since").replaceChildren(timeEl(tunnel.since));
  $("tunnel-rtt").textContent = !up || tunnel.rtt_ms == null ? t("unknown") : t("rttValue", { ms: Math.round(tunnel.rtt_ms) });
  const error = $("tunnel-error");
  error.hidden = up || !tunnel.last_error;
  error.textContent = error.hidden ? "" : t("lastError", { error: tunnel.last_error });
}

function renderChecks(checks) {
  // Failing connectivity checks, with what to do: "why can't support reach us?"
  const failing = (checks || []).filter((c) => !c.ok);
  const list = $("checks-failing");
  list.hidden = failing.length === 0;
  list.replaceChildren(
    ...failing.map((c) =>
      el(
        "li",
        {},
        el("span", { text: t("checkFailed", { name: c.name, detail: c.detail }) }),
        c.remedy ? el("span", { class: "remedy", text: t("checkRemedy", { remedy: c.remedy }) }) : null,
      ),
    ),
  );
}

function renderMode(mode) {
  for (const m of MODES) {
    $(`mode-${m}`).setAttribute("aria-pressed", String(m === mode));
  }
  $("switch-off").hidden = mode === "disabled";
}

function keyed(container, items, key, build, update) {
  const existing = new Map([...container.children].map((node) => [node.dataset.key, node]));
  const wanted = new Set();
  for (const item of items) {
    const k = key(item);
    wanted.add(k);
    let node = existing.get(k);
    if (!node) {
      node = build(item);
      node.dataset.key = k;
      container.append(node);
    }
    update(node, item);
  }
  for (const [k, node] of existing) if (!wanted.has(k)) node.remove();
}

function targetsText(list) {
  return list && list.length ? list.join(", ") : t("all");
}

function renderRequests(access) {
  $("requests-none").hidden = access.requests.length > 0;
  keyed($("requests"), access.requests, (r) => r.id, (r) => buildRequest(r, access.targets), updateRequest);
}

function buildRequest(request, allTargets) {
  const id = request.id;
  const targets = request.targets && request.targets.length ? request.targets : allTargets;
  const length = el("select", { id: `len-${id}` });
  lengthOptions(length, 60);
  const targetBox = el("fieldset", { class: "choices inline" }, el("legend", { text: t("targetsLegend") }));
  for (const name of targets) {
    const cid = `tg-${id}-${name}`;
    targetBox.append(el("label", { for: cid }, el("input", { type: "checkbox", id: cid, value: name, checked: true }), el("span", { text: name })));
  }
  const permBox = el("fieldset", { class: "choices inline" }, el("legend", { text: t("permissionLegend") }));
  permissionChoices(permBox, `perm-${id}`, "full");
  const reason = el("input", { type: "text", id: `deny-${id}`, maxlength: "300", autocomplete: "off" });
  const approve = el("button", { type: "button", class: "good", text: t("approve") });
  const deny = el("button", { type: "button", class: "danger", text: t("deny") });
  approve.addEventListener("click", () => {
    const chosen = [...targetBox.querySelectorAll("input:checked")].map((i) => i.value);
    const perm = permBox.querySelector("input:checked");
    act(
      `/api/requests/${encodeURIComponent(id)}/approve`,
      { minutes: Number(length.value), targets: chosen.length ? chosen : undefined, permission: perm ? perm.value : "full" },
      () => t("approved", { engineer: request.engineer }),
    );
  });
  deny.addEventListener("click", () => {
    act(`/api/requests/${encodeURIComponent(id)}/deny`, { reason: reason.value }, () => t("denied", { engineer: request.engineer }));
  });
  const headingId = `rq-${id}`;
  return el(
    "article",
    { class: "item request", "aria-labelledby": headingId },
    el("h3", { id: headingId, text: t("requestHeading", { engineer: request.engineer }) }),
    el("p", { class: "why", text: request.reason ? t("requestReason", { reason: request.reason }) : t("noReason") }),
    el("p", { class: "meta" }),
    el(
      "div",
      { class: "decide" },
      el("div", {}, el("label", { class: "field", for: `len-${id}`, text: t("lengthLabel") }), length),
      el("div", {}, targetBox),
      el("div", {}, permBox),
    ),
    el("div", { class: "actions" }, approve),
    el(
      "div",
      { class: "deny" },
      el("label", { class: "field", for: `deny-${id}`, text: t("denyReasonLabel") }),
      el("div", { class: "deny-row" }, reason, deny),
    ),
  );
}

function updateRequest(node, request) {
  const meta = node.querySelector(".meta");
  const asked = timeEl(request.asked);
  const text = t("requestWaiting", { ago: "\u0000", targets: targetsText(request.targets) });
  const [before, after] = text.split("\u0000");
  meta.replaceChildren(before, asked, after);
}

function renderSessions(status) {
  const byId = new Map(status.connections.map((c) => [c.id, c]));
  const sessions = status.sessions.map((s) => ({ ...s, live: s.connections.map((id) => byId.get(id)).filter(Boolean) }));
  const inSession = new Set(sessions.flatMap((s) => s.connections));
  const loose = status.connections.filter((c) => !c.session || !inSession.has(c.id));
  if (loose.length) {
    sessions.push({ id: "-", engineer: loose[0].engineer, targets: [], permission: "full", started: loose[0].started, expires: null, live: loose, implicit: true, loose: true });
  }
  $("sessions-none").hidden = sessions.length > 0;
  keyed($("sessions"), sessions, (s) => s.id, buildSession, updateSession);
}

function buildSession(session) {
  const headingId = `ss-${session.id}`;
  const end = el("button", { type: "button", class: "danger", text: t("end"), hidden: !!session.loose });
  end.addEventListener("click", () => {
    act(`/api/sessions/${encodeURIComponent(session.id)}/end`, { reason: t("endReason") }, () => t("ended", { engineer: session.engineer }));
  });
  return el(
    "article",
    { class: "item session", "aria-labelledby": headingId },
    el("h3", { id: headingId, text: t("sessionHeading", { engineer: session.engineer }) }),
    el("p", { class: "meta" }),
    el("p", { class: "approved meta" }),
    el("ul", { class: "conns", "aria-label": t("sessionsTitle") }),
    el("p", { class: "none idle", text: t("sessionNoConnections") }),
    el("div", { class: "actions" }, end),
  );
}

function updateSession(node, session) {
  const meta = node.querySelector(".meta");
  const expires = parseTime(session.expires);
  const ends = expires ? t("sessionEnds", { left: duration((expires - Date.now()) / 1000) }) : t("sessionNoEnd");
  const text = t("sessionMeta", { permission: t(`perm_${session.permission}`), targets: targetsText(session.targets), ago: "\u0000", ends });
  const [before, after] = text.split("\u0000");
  meta.replaceChildren(before, timeEl(session.started), after);
  const approved = node.querySelector(".approved");
  // A code's first digits are in approved_by: the page never shows any code but the one just made.
  const byCode = /^code \S+ from (.*)$/.exec(session.approved_by || "");
  approved.textContent = session.implicit || !session.approved_by
    ? ""
    : byCode
      ? t("sessionApprovedByCode", { who: byCode[1] })
      : t("sessionApprovedBy", { who: session.approved_by });
  approved.hidden = !approved.textContent;
  node.querySelector(".idle").hidden = session.live.length > 0;
  keyed(node.querySelector(".conns"), session.live, (c) => c.id, buildConnection, updateConnection);
}

function buildConnection() {
  return el("li", { class: "connection" }, el("div", { class: "where" }), el("div", { class: "bytes" }));
}

function updateConnection(node, c) {
  const text = t("connectionLine", { target: c.target, ago: "\u0000", duration: "\u0001" });
  const [before, rest] = text.split("\u0000");
  const [middle, after] = rest.split("\u0001");
  const dur = timeEl(c.started, (ms) => duration((Date.now() - ms) / 1000));
  dur.dataset.kind = "duration";
  node.querySelector(".where").replaceChildren(before, timeEl(c.started), middle, dur, after);
  node.querySelector(".bytes").textContent = t("connectionBytes", { from: bytes(c.bytes_from_target), to: bytes(c.bytes_to_target) });
  node.dataset.toTarget = String(c.bytes_to_target);
  node.dataset.fromTarget = String(c.bytes_from_target);
}

function fill(text, vars) {
  return text.replace(/\{(\w+)\}/g, (_, name) => (vars[name] == null ? "" : String(vars[name])));
}

function eventText(event) {
  const engineer = event.engineer || event.who || "";
  const vars = {
    engineer,
    target: event.target || targetsText(event.targets),
    old: event.old ? t(`mode_${event.old}`) : "",
    new: event.new ? t(`mode_${event.new}`) : "",
    event: event.event,
  };
  return fill(S.ev[event.event] || S.ev.other, vars);
}

function renderEvents(events) {
  $("events-none").hidden = events.length > 0;
  const list = $("events");
  list.replaceChildren(
    ...events.map((event) => {
      const refused = event.result === "refused";
      const by = event.who && event.who !== (event.engineer || event.who) ? event.who : null;
      const showBy = event.who && !/^stream\.|^session\.started|^code\.used|^session\.requested/.test(event.event);
      return el(
        "li",
        {},
        timeEl(event.time),
        el("span", { class: refused ? "refused" : "", text: eventText(event) + (refused ? ` (${t("event_refused")})` : "") }),
        showBy || by ? el("span", { class: "none", text: t("eventBy", { who: event.who }) }) : null,
      );
    }),
  );
}

document.addEventListener("DOMContentLoaded", () => {
  setupStatic();
  checkAuth();
});
