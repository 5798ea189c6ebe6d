// The agent desktop: sign in with a token, watch queues and live conversations, open one to see its
// transcript, sentiment, suggested replies (with their articles), escalations and routing, and answer.
// Plain ES module, no build step. Every server text is put in with textContent (see common.js `h`).

import { duration, fill, h, sparkline, wsUrl } from "./common.js";

const TOKEN_KEY = "switchboard.desktop.token";
const POLL_MS = 2000;
const STAFF = new Set(["agent", "supervisor", "admin"]);
const SUPERVISORS = new Set(["supervisor", "admin"]);

const $ = (id) => document.getElementById(id);

class AuthFailed extends Error {}

const app = {
  token: null,
  who: null,
  pollTimer: null,
  polling: false,
  live: [],
  view: "desk",
  open: null, // the watched session (see openSession)
};

// ------------------------------------------------------------------ HTTP

async function api(path) {
  const r = await fetch(path, {
    headers: { Authorization: `Bearer ${app.token}`, Accept: "application/json" },
    cache: "no-store",
  });
  if (r.status === 401) throw new AuthFailed("the token was not accepted");
  if (!r.ok) {
    let message = "";
    try {
      message = (await r.json()).message || "";
    } catch {
      /* not JSON: the status says enough */
    }
    throw new Error(message || `${path} answered HTTP ${r.status}`);
  }
  return r.json();
}

// ------------------------------------------------------------------ sign in / out

function showLoginError(text) {
  const el = $("login-error");
  el.textContent = text;
  el.hidden = !text;
}

async function login(token) {
  showLoginError("");
  if (!token) return;
  app.token = token;
  let who;
  try {
    who = await api("/v1/whoami");
  } catch (err) {
    app.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLoginError(
      err instanceof AuthFailed
        ? "That token was not accepted. Check it and try again."
        : `Could not reach switchboard (${err.message}).`,
    );
    return;
  }
  if (!STAFF.has(who.role)) {
    app.token = null;
    showLoginError("This token is for the customer chat widget; sign in with an agent or supervisor token.");
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  app.who = who;
  $("token").value = "";
  $("whoami").textContent = `${who.tenant} · ${who.role}`;
  $("whoami").hidden = false;
  $("logout").hidden = false;
  $("login").hidden = true;
  $("tabs").hidden = false;
  $("tab-supervisor").hidden = !SUPERVISORS.has(who.role);
  selectView(SUPERVISORS.has(who.role) ? "supervisor" : "desk");
  poll();
}

function logout(message = "") {
  clearTimeout(app.pollTimer);
  closeSession();
  app.token = null;
  app.who = null;
  app.live = [];
  sessionStorage.removeItem(TOKEN_KEY);
  for (const id of ["whoami", "logout", "tabs", "view-desk", "view-supervisor"]) $(id).hidden = true;
  $("login").hidden = false;
  showLoginError(message);
  $("token").focus();
}

// ------------------------------------------------------------------ views

function selectView(name) {
  if (name === "supervisor" && !SUPERVISORS.has(app.who?.role)) name = "desk";
  app.view = name;
  for (const [view, tab] of [
    ["desk", "tab-desk"],
    ["supervisor", "tab-supervisor"],
  ]) {
    $(`view-${view}`).hidden = view !== name;
    $(tab).setAttribute("aria-selected", String(view === name));
    $(tab).tabIndex = view === name ? 0 : -1;
  }
}

// ------------------------------------------------------------------ polling: queues and live sessions

async function poll() {
  clearTimeout(app.pollTimer);
  if (!app.token || app.polling) return;
  app.polling = true;
  const [queues, live] = await Promise.allSettled([api("/v1/queues"), api("/v1/live")]);
  app.polling = false;
  if (!app.token) return;
  const failed = [queues, live].filter((r) => r.status === "rejected").map((r) => r.reason);
  if (failed.some((e) => e instanceof AuthFailed)) {
    logout("Your token is no longer accepted; sign in again.");
    return;
  }
  if (live.status === "fulfilled") {
    app.live = live.value.sessions || [];
    renderSessions();
    renderSupervisor();
  }
  if (queues.status === "fulfilled") {
    renderQueues(queues.value.queues || []);
    renderAgents(queues.value.agents || []);
  }
  $("poll-status").textContent = failed.length
    ? `Could not refresh (${failed[0].message}); retrying…`
    : `Updated ${new Date().toLocaleTimeString()}`;
  app.pollTimer = setTimeout(poll, POLL_MS);
}

function keepFocus(container, render) {
  const focused = container.contains(document.activeElement) ? document.activeElement.dataset.sessionId : null;
  render();
  if (focused) container.querySelector(`[data-session-id="${CSS.escape(focused)}"]`)?.focus();
}

function priorityBadge(priority) {
  return h("span", { class: `badge ${priority}`, dataset: { testid: "priority" } }, priority);
}

function renderSessions() {
  const list = $("sessions");
  keepFocus(list, () =>
    fill(
      list,
      app.live.map((s) =>
        h(
          "li",
          {},
          h(
            "button",
            {
              type: "button",
              class: `session-item${s.escalation ? " escalated" : ""}`,
              dataset: { testid: "session-row", sessionId: s.session_id, status: s.status },
              "aria-current": app.open?.id === s.session_id ? "true" : "false",
              onclick: () => openSession(s.session_id),
            },
            h("span", {}, h("strong", {}, s.customer_id), " · ", s.channel),
            h(
              "span",
              {},
              s.escalation ? priorityBadge(s.escalation.priority) : null,
              " ",
              h("span", { class: `badge ${s.status}` }, s.status),
            ),
            h("span", { class: "last" }, s.last_text || `${s.turns} turns`),
          ),
        ),
      ),
    ),
  );
  $("sessions-empty").hidden = app.live.length > 0;
}

function renderQueues(queues) {
  const box = $("queues");
  keepFocus(box, () =>
    fill(
      box,
      queues.length
        ? queues.map((q) =>
            h(
              "section",
              { class: "queue", dataset: { testid: "queue", queue: q.name } },
              h("header", {}, h("strong", {}, q.name), h("span", { class: "badge" }, `${q.depth} waiting`)),
              (q.entries || []).map((e) =>
                h(
                  "div",
                  { class: "queue-entry", dataset: { testid: "queue-entry" } },
                  h(
                    "button",
                    {
                      type: "button",
                      class: "link",
                      dataset: { sessionId: e.session_id },
                      onclick: () => openSession(e.session_id),
                    },
                    e.session_id,
                  ),
                  h("span", {}, priorityBadge(e.priority), " ", h("span", { class: "muted" }, duration(e.waited_s))),
                ),
              ),
            ),
          )
        : h("p", { class: "empty" }, "Nobody is waiting."),
    ),
  );
}

function renderAgents(agents) {
  fill(
    $("agents"),
    agents.length
      ? agents.map((a) => {
          const load = a.capacity ? Math.min(100, Math.round((100 * a.active) / a.capacity)) : 0;
          return h(
            "div",
            { class: "agent-row", dataset: { testid: "agent-row", agentId: a.agent_id } },
            h("span", {}, h("span", { class: `status-dot ${a.status}`, "aria-hidden": "true" }), a.name || a.agent_id),
            h("span", { class: "muted small" }, `${a.status} · ${a.active}/${a.capacity}`),
            h(
              "span",
              {
                class: "load",
                role: "meter",
                "aria-label": `${a.name || a.agent_id} load`,
                "aria-valuemin": "0",
                "aria-valuemax": String(a.capacity || 0),
                "aria-valuenow": String(a.active || 0),
              },
              h("span", { style: `width:${load}%` }),
            ),
            a.skills?.length ? h("span", { class: "muted small" }, a.skills.join(", ")) : null,
          );
        })
      : h("p", { class: "empty" }, "No agents signed in."),
  );
}

function routingText(r) {
  if (!r) return "";
  const parts = [r.status, r.queue];
  if (r.agent_id) parts.push(`→ ${r.agent_id}`);
  if (r.position) parts.push(`#${r.position}`);
  if (r.expected_wait_s) parts.push(`~${duration(r.expected_wait_s)}`);
  return parts.filter(Boolean).join(" ");
}

function renderSupervisor() {
  const body = $("supervisor-rows");
  keepFocus(body, () =>
    fill(
      body,
      app.live.map((s) => {
        const scores = s.sentiment || [];
        const latest = scores.length ? scores[scores.length - 1] : null;
        const open = () => {
          openSession(s.session_id);
          selectView("desk");
        };
        return h(
          "tr",
          {
            class: s.escalation ? "escalated" : "",
            tabindex: "0",
            dataset: { testid: "session-row", sessionId: s.session_id, status: s.status },
            onclick: open,
            onkeydown: (ev) => {
              if (ev.key === "Enter" || ev.key === " ") {
                ev.preventDefault();
                open();
              }
            },
          },
          h("td", {}, h("code", {}, s.session_id)),
          h("td", {}, s.channel),
          h("td", {}, s.customer_id),
          h("td", {}, h("span", { class: `badge ${s.status}` }, s.status)),
          h("td", {}, String(s.turns ?? 0)),
          h(
            "td",
            { dataset: { testid: "row-sentiment" } },
            latest === null ? "—" : latest.toFixed(2),
            " ",
            scores.length ? sparkline(scores, { width: 90, height: 22, small: true }) : null,
          ),
          h(
            "td",
            { dataset: { testid: "row-escalation" } },
            s.escalation ? [priorityBadge(s.escalation.priority), " ", s.escalation.queue] : "—",
          ),
          h("td", { dataset: { testid: "row-routing" } }, routingText(s.routing) || "—"),
          h("td", {}, s.started_at ? new Date(s.started_at * 1000).toLocaleTimeString() : ""),
        );
      }),
    ),
  );
  $("supervisor-empty").hidden = app.live.length > 0;
}

// ------------------------------------------------------------------ the open session (watch socket)

function openSession(sessionId) {
  selectView("desk");
  if (app.open?.id === sessionId) return;
  closeSession();
  const summary = app.live.find((s) => s.session_id === sessionId) || {};
  app.open = {
    id: sessionId,
    ws: null,
    retry: 0,
    timer: null,
    closed: false,
    status: summary.status || "live",
    channel: summary.channel || "",
    customerId: summary.customer_id || "",
    startedAt: summary.started_at || null,
  };
  resetSessionView();
  $("session-placeholder").hidden = true;
  $("session-open").hidden = false;
  renderHead();
  for (const el of document.querySelectorAll("#sessions [data-session-id]")) {
    el.setAttribute("aria-current", String(el.dataset.sessionId === sessionId));
  }
  connectWatch(app.open);
}

function closeSession() {
  const s = app.open;
  if (!s) return;
  s.closed = true;
  clearTimeout(s.timer);
  if (s.ws && s.ws.readyState <= WebSocket.OPEN) s.ws.close(1000);
  app.open = null;
  $("session-open").hidden = true;
  $("session-placeholder").hidden = false;
}

function resetSessionView() {
  const s = app.open;
  s.lines = new Map(); // utterance_id -> element
  s.partials = new Map(); // speaker -> element of its pending partial line
  s.suggestions = new Map(); // suggestion_id -> {ev, text, pieces, final, outcome, el, ...}
  s.scores = [];
  s.lastEscalation = null;
  for (const id of ["transcript", "suggestions"]) fill($(id));
  for (const id of ["escalation", "routing", "s-error"]) $(id).hidden = true;
  $("suggestions-empty").hidden = false;
  renderSentiment();
}

function setConn(text) {
  $("s-conn").textContent = text;
}

function connectWatch(s) {
  if (s.closed) return;
  setConn("connecting…");
  const ws = new WebSocket(wsUrl(`/v1/sessions/${encodeURIComponent(s.id)}/watch`, app.token));
  s.ws = ws;
  ws.addEventListener("open", () => {
    s.retry = 0;
    setConn("watching live");
  });
  ws.addEventListener("message", (msg) => {
    if (app.open !== s || typeof msg.data !== "string") return;
    let event;
    try {
      event = JSON.parse(msg.data);
    } catch {
      return;
    }
    apply(s, event);
  });
  ws.addEventListener("close", (ev) => {
    if (app.open !== s || s.closed) return;
    if (ev.code === 1008) {
      setConn("not allowed to watch this session");
      return;
    }
    if (s.status === "ended") {
      setConn("conversation ended");
      renderHead();
      return;
    }
    const wait = Math.min(10000, 1000 * 2 ** s.retry++);
    setConn(`connection lost; reconnecting in ${Math.round(wait / 1000)} s…`);
    s.timer = setTimeout(() => connectWatch(s), wait);
  });
}

function send(s, event) {
  if (!s.ws || s.ws.readyState !== WebSocket.OPEN) {
    showError("Not connected to the conversation right now; try again in a moment.");
    return false;
  }
  s.ws.send(JSON.stringify(event));
  return true;
}

function apply(s, ev) {
  switch (ev.type) {
    case "session.snapshot":
      resetSessionView();
      s.status = ev.status || s.status;
      s.channel = ev.channel || s.channel;
      s.customerId = ev.customer_id || s.customerId;
      for (const past of ev.events || []) apply(s, past);
      s.status = ev.status || s.status; // replayed events do not override the snapshot's status
      renderHead();
      refreshActions(s);
      break;
    case "session.started":
      s.channel = ev.channel || s.channel;
      renderHead();
      break;
    case "transcript.partial":
    case "transcript.final":
      upsertLine(s, ev, ev.type === "transcript.final");
      break;
    case "sentiment":
      s.scores.push(Number(ev.score) || 0);
      annotate(s, ev.utterance_id, "senti", `${ev.label} ${Number(ev.score).toFixed(2)}`, ev.label);
      renderSentiment();
      break;
    case "intent":
      annotate(s, ev.utterance_id, "intent", ev.intent);
      break;
    case "assist.suggestion":
      upsertSuggestion(s, ev);
      break;
    case "assist.delta":
      appendDelta(s, ev);
      break;
    case "suggestion.feedback": {
      const sug = s.suggestions.get(ev.suggestion_id);
      if (sug) setOutcome(s, sug, ev.action);
      break;
    }
    case "escalation":
      showEscalation(ev);
      break;
    case "routing":
      showRouting(ev);
      break;
    case "error":
      showError(ev.message || ev.code, ev.code);
      break;
    case "session.ended":
      s.status = "ended";
      renderHead();
      refreshActions(s);
      break;
    default:
      break; // redaction and anything newer: nothing to show
  }
}

function renderHead() {
  const s = app.open;
  if (!s) return;
  $("s-title").textContent = `${s.customerId || "customer"} · ${s.channel || "session"}`;
  const status = $("s-status");
  status.textContent = s.status;
  status.className = `badge ${s.status}`;
  $("s-meta").textContent =
    s.id + (s.startedAt ? ` · started ${new Date(s.startedAt * 1000).toLocaleTimeString()}` : "");
  const ended = s.status === "ended";
  $("reply-text").disabled = ended;
  $("reply").querySelector("button").disabled = ended;
  $("reply-text").placeholder = ended ? "The conversation has ended." : "Reply to the customer…";
}

function speakerClass(speaker) {
  if (speaker === "agent") return "agent";
  if (speaker === "customer") return "customer";
  return "other";
}

function upsertLine(s, ev, final) {
  const box = $("transcript");
  const stick = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  let el = s.lines.get(ev.utterance_id);
  if (!el) {
    el = h(
      "div",
      { class: "line", dataset: { testid: "transcript-line", utteranceId: ev.utterance_id } },
      h("span", { class: "who" }, ev.speaker),
      h("div", { class: "text", dataset: { testid: "line-text" } }),
      h("span", { class: "notes small muted" }),
    );
    s.lines.set(ev.utterance_id, el);
    box.append(el);
  }
  el.className = `line ${speakerClass(ev.speaker)}${final ? "" : " partial"}`;
  el.dataset.speaker = ev.speaker;
  el.dataset.final = String(final);
  el.querySelector(".who").textContent = ev.speaker;
  el.querySelector(".text").textContent = ev.text;
  const pending = s.partials.get(ev.speaker);
  if (final) {
    // a partial that never got this utterance id is superseded by the speaker's final
    if (pending && pending !== el && pending.dataset.final === "false") pending.remove();
    s.partials.delete(ev.speaker);
  } else {
    s.partials.set(ev.speaker, el);
  }
  if (stick) box.scrollTop = box.scrollHeight;
}

function annotate(s, utteranceId, kind, text, tone = "") {
  const el = s.lines.get(utteranceId);
  if (!el || !text) return;
  const notes = el.querySelector(".notes");
  let note = notes.querySelector(`[data-kind="${kind}"]`);
  if (!note) {
    note = h("span", { dataset: { kind } });
    notes.append(note, " ");
  }
  note.className = kind === "senti" ? `senti ${tone}` : "";
  note.textContent = text;
}

function renderSentiment() {
  const s = app.open;
  const scores = s ? s.scores : [];
  fill($("sentiment"), sparkline(scores));
  const last = scores.length ? scores[scores.length - 1] : null;
  $("senti-label").textContent =
    last === null ? "no sentiment yet" : `sentiment ${last.toFixed(2)} (${scores.length} turns)`;
}

// ------------------------------------------------------------------ suggestions

function upsertSuggestion(s, ev) {
  let sug = s.suggestions.get(ev.suggestion_id);
  if (!sug) {
    sug = { id: ev.suggestion_id, pieces: [], outcome: null, editing: false };
    sug.el = buildSuggestion(s, sug);
    s.suggestions.set(sug.id, sug);
    $("suggestions").prepend(sug.el);
    $("suggestions-empty").hidden = true;
  }
  sug.ev = ev;
  sug.final = ev.final !== false;
  if (sug.final || !sug.pieces.length) sug.text = ev.text;
  renderSuggestion(s, sug);
}

function appendDelta(s, ev) {
  const sug = s.suggestions.get(ev.suggestion_id);
  if (!sug || sug.final) return;
  sug.pieces[ev.index] = ev.text;
  sug.text = sug.pieces.join("");
  renderSuggestion(s, sug);
}

function buildSuggestion(s, sug) {
  const el = h(
    "article",
    { class: "suggestion", dataset: { testid: "suggestion", suggestionId: sug.id } },
    h("div", { class: "meta" }),
    h("div", { class: "stext", dataset: { testid: "suggestion-text" } }),
    h("ul", { class: "articles", dataset: { testid: "suggestion-articles" }, "aria-label": "Knowledge articles" }),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", class: "primary", dataset: { testid: "accept" }, onclick: () => accept(s, sug) }, "Accept"),
      h("button", { type: "button", dataset: { testid: "edit" }, onclick: () => startEdit(s, sug) }, "Edit"),
      h("button", { type: "button", class: "danger", dataset: { testid: "reject" }, onclick: () => reject(s, sug) }, "Reject"),
    ),
    h(
      "form",
      { class: "edit", hidden: true, onsubmit: (e) => (e.preventDefault(), sendEdited(s, sug)) },
      h("label", { class: "sr-only", for: `edit-${sug.id}` }, "Edit the suggested reply"),
      h("textarea", { id: `edit-${sug.id}`, rows: "4", dataset: { testid: "edit-text" } }),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "submit", class: "primary", dataset: { testid: "send-edit" } }, "Send edited reply"),
        h("button", { type: "button", onclick: () => cancelEdit(s, sug) }, "Cancel"),
      ),
    ),
    h("div", { class: "outcome", role: "status", dataset: { testid: "suggestion-outcome" } }),
  );
  return el;
}

function renderSuggestion(s, sug) {
  const { ev, el } = sug;
  const generating = !sug.final;
  el.dataset.final = String(sug.final);
  el.dataset.source = ev.source || "";
  fill(
    el.querySelector(".meta"),
    h("span", { class: "badge" }, generating ? "writing a reply…" : ev.source || "suggestion"),
    ev.model ? h("span", {}, ev.model) : null,
    ev.fallback ? h("span", {}, `fallback: ${ev.fallback}`) : null,
    ev.grounding && ev.grounding.grounded === false ? h("span", {}, "not grounded: articles shown") : null,
  );
  const text = el.querySelector(".stext");
  text.textContent = sug.text || "";
  text.classList.toggle("streaming", generating && sug.pieces.length > 0);
  text.classList.toggle("muted", generating && !sug.pieces.length);
  const cited = new Set(ev.citations || []);
  fill(
    el.querySelector(".articles"),
    (ev.articles || []).map((a) =>
      h(
        "li",
        { class: cited.has(a.id) ? "cited" : "", dataset: { testid: "article", articleId: a.id } },
        h("span", { class: "aid" }, a.id),
        h("span", { class: "atitle" }, a.title),
      ),
    ),
  );
  refreshActions(s, sug);
}

function refreshActions(s, only = null) {
  for (const sug of only ? [only] : s.suggestions.values()) {
    const usable = sug.final && !sug.outcome && s.status !== "ended";
    for (const b of sug.el.querySelectorAll(".actions > button")) b.disabled = !usable;
    sug.el.querySelector("form.edit .actions button[type=submit]").disabled = !usable;
  }
}

function setOutcome(s, sug, action) {
  sug.outcome = action;
  sug.editing = false;
  sug.el.querySelector("form.edit").hidden = true;
  sug.el.classList.add("done");
  sug.el.dataset.outcome = action;
  const out = sug.el.querySelector(".outcome");
  out.className = `outcome ${action}`;
  out.textContent = { accepted: "Accepted and sent", edited: "Edited and sent", rejected: "Rejected" }[action] || action;
  refreshActions(s, sug);
}

function accept(s, sug) {
  if (!sug.final || sug.outcome || !sug.text) return;
  if (!send(s, { type: "suggestion.feedback", suggestion_id: sug.id, action: "accepted" })) return;
  send(s, { type: "chat.message", text: sug.text });
  setOutcome(s, sug, "accepted");
}

function reject(s, sug) {
  if (!sug.final || sug.outcome) return;
  if (send(s, { type: "suggestion.feedback", suggestion_id: sug.id, action: "rejected" })) setOutcome(s, sug, "rejected");
}

function startEdit(s, sug) {
  if (!sug.final || sug.outcome) return;
  const form = sug.el.querySelector("form.edit");
  const area = form.querySelector("textarea");
  area.value = sug.text || "";
  form.hidden = false;
  sug.editing = true;
  area.focus();
}

function cancelEdit(s, sug) {
  sug.el.querySelector("form.edit").hidden = true;
  sug.editing = false;
}

function sendEdited(s, sug) {
  const text = sug.el.querySelector("form.edit textarea").value.trim();
  if (!text || sug.outcome) return;
  if (!send(s, { type: "suggestion.feedback", suggestion_id: sug.id, action: "edited", final_text: text })) return;
  send(s, { type: "chat.message", text });
  setOutcome(s, sug, "edited");
}

// ------------------------------------------------------------------ escalation, routing, errors

function showEscalation(ev) {
  const box = $("escalation");
  fill(
    box,
    h("strong", {}, "Escalation"),
    h("span", {}, "queue ", h("strong", { dataset: { testid: "escalation-queue" } }, ev.queue)),
    h("span", {}, "priority ", h("span", { class: `badge ${ev.priority}`, dataset: { testid: "escalation-priority" } }, ev.priority)),
    h("span", { dataset: { testid: "escalation-reason" } }, ev.reason),
    ev.factors?.length ? h("span", { class: "small" }, `(${ev.factors.join(", ")})`) : null,
  );
  box.hidden = false;
}

function showRouting(ev) {
  const box = $("routing");
  const where =
    ev.status === "assigned"
      ? ["assigned to ", h("strong", {}, ev.agent_id || "an agent")]
      : ev.status === "queued"
        ? ["waiting in ", h("strong", {}, ev.queue), ev.position ? ` (position ${ev.position})` : ""]
        : ["overflow from ", h("strong", {}, ev.queue)];
  fill(
    box,
    h("strong", {}, "Routing"),
    h("span", { dataset: { testid: "routing-status", status: ev.status } }, where),
    h("span", {}, priorityBadge(ev.priority)),
    ev.expected_wait_s ? h("span", {}, `expected wait ${duration(ev.expected_wait_s)}`) : null,
    ev.notice ? h("span", { class: "small" }, `customer sees: “${ev.notice}”`) : null,
  );
  box.hidden = false;
}

function showError(message, code = "") {
  const box = $("s-error");
  fill(box, h("strong", {}, "Problem"), h("span", {}, message), code ? h("code", { class: "small" }, code) : null);
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => (box.hidden = true), 8000);
}

// ------------------------------------------------------------------ wiring

function init() {
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("token");
  if (fromUrl) {
    $("token").value = fromUrl;
    params.delete("token"); // keep the token out of the address bar and history
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : ""));
  }
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    login($("token").value.trim());
  });
  $("logout").addEventListener("click", () => logout());
  $("tab-desk").addEventListener("click", () => selectView("desk"));
  $("tab-supervisor").addEventListener("click", () => selectView("supervisor"));
  $("tabs").addEventListener("keydown", (ev) => {
    if (ev.key !== "ArrowLeft" && ev.key !== "ArrowRight") return;
    const tabs = [...$("tabs").querySelectorAll("[role=tab]:not([hidden])")];
    const next = tabs[(tabs.indexOf(document.activeElement) + (ev.key === "ArrowRight" ? 1 : -1) + tabs.length) % tabs.length];
    next?.focus();
    next?.click();
  });
  $("reply").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const area = $("reply-text");
    const text = area.value.trim();
    if (text && app.open && send(app.open, { type: "chat.message", text })) area.value = "";
  });
  $("reply-text").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      $("reply").requestSubmit();
    }
  });
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved && !fromUrl) login(saved);
  else $("token").focus();
}

init();
