// The customer chat widget: /widget?token=<customer token>[&customer_id=...]. One chat session on the
// PROTOCOL v1 websocket; a dropped connection (or a reload) resumes the same session by its id.
// The customer role only receives the conversation itself, routing notices, errors and the end.

import { h, waitWords, wsUrl } from "./common.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const customerId = params.get("customer_id") || rememberedCustomer();
const SESSION_KEY = `switchboard.widget.session.${customerId}`;

const chat = {
  ws: null,
  sessionId: sessionStorage.getItem(SESSION_KEY),
  live: false, // session.started received on the current connection
  everConnected: false,
  ended: false,
  refused: false, // the token was refused: reconnecting would not help
  retry: 0,
  timer: null,
  seen: new Set(), // utterance ids already shown (a resume may repeat them)
  pending: new Map(), // message_id -> bubble shown until the server's (redacted) transcript arrives
};

function rememberedCustomer() {
  let id = localStorage.getItem("switchboard.widget.customer");
  if (!id) {
    id = `web-${crypto.getRandomValues(new Uint32Array(2)).join("").slice(0, 12)}`;
    localStorage.setItem("switchboard.widget.customer", id);
  }
  return id;
}

function newId(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

// ------------------------------------------------------------------ rendering

function scrollDown() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function bubble(speaker, text, extra = {}) {
  const mine = speaker === "customer";
  const el = h(
    "div",
    { class: `msg ${mine ? "customer" : "agent"}`, dataset: { testid: "message", speaker, ...extra } },
    h("span", { class: "who" }, mine ? "You" : "Agent"),
    h("span", { class: "body" }, text),
  );
  $("messages").append(el);
  scrollDown();
  return el;
}

function notice(text, { error = false, testid = "notice" } = {}) {
  $("messages").append(
    h("div", { class: `notice${error ? " error" : ""}`, role: error ? "alert" : null, dataset: { testid } }, text),
  );
  scrollDown();
}

function setStatus(text, cls = "") {
  const el = $("conn");
  el.textContent = text;
  el.className = `conn ${cls}`;
}

function setComposer(enabled) {
  $("text").disabled = !enabled;
  $("send").disabled = !enabled;
  $("end").disabled = !enabled;
}

// ------------------------------------------------------------------ connection

function connect() {
  clearTimeout(chat.timer);
  if (!token) {
    setStatus("unavailable", "closed");
    notice("This chat link is incomplete. Please open the chat again from our website.", { error: true });
    return;
  }
  setStatus(chat.everConnected ? "reconnecting…" : "connecting…");
  if (chat.ws && chat.ws.readyState <= WebSocket.OPEN) chat.ws.close(1000); // never two sockets at once
  const ws = new WebSocket(wsUrl("/v1/sessions", token));
  chat.ws = ws;
  chat.live = false;
  ws.addEventListener("open", () => start(ws));
  ws.addEventListener("message", (msg) => {
    if (ws !== chat.ws || typeof msg.data !== "string") return;
    try {
      handle(JSON.parse(msg.data));
    } catch (err) {
      console.warn("widget: could not handle a server event", err);
    }
  });
  ws.addEventListener("close", (ev) => {
    if (ws !== chat.ws) return;
    chat.live = false;
    setComposer(false);
    if (chat.ended) return;
    if (chat.refused || ev.code === 1008) {
      setStatus("disconnected", "closed");
      return;
    }
    const wait = Math.min(15000, 1000 * 2 ** chat.retry++);
    setStatus(`reconnecting in ${Math.ceil(wait / 1000)} s…`, "closed");
    chat.timer = setTimeout(connect, wait);
  });
}

function start(ws) {
  const event = { type: "session.start", channel: "chat", customer_id: customerId };
  if (chat.sessionId) event.session_id = chat.sessionId;
  ws.send(JSON.stringify(event));
}

function send(event) {
  if (!chat.ws || chat.ws.readyState !== WebSocket.OPEN || !chat.live) return false;
  chat.ws.send(JSON.stringify(event));
  return true;
}

// ------------------------------------------------------------------ server events

function handle(ev) {
  switch (ev.type) {
    case "session.started": {
      const resumed = chat.everConnected || ev.resumed;
      chat.sessionId = ev.session_id;
      sessionStorage.setItem(SESSION_KEY, ev.session_id);
      chat.live = true;
      chat.retry = 0;
      setStatus("connected", "connected");
      setComposer(true);
      if (!chat.everConnected && !ev.resumed) notice("You're connected. How can we help you today?");
      else if (resumed) notice("Reconnected: your conversation continues.");
      chat.everConnected = true;
      $("text").focus();
      break;
    }
    case "transcript.final":
      showTranscript(ev);
      break;
    case "routing": {
      const wait = waitWords(ev.expected_wait_s);
      const text = ev.notice || (wait ? `An agent will be with you soon: expected wait ${wait}.` : "");
      if (text) notice(text, { testid: "routing-notice" });
      break;
    }
    case "error":
      showError(ev);
      break;
    case "session.ended":
      finish();
      break;
    default:
      break; // nothing else is meant for the customer
  }
}

function showTranscript(ev) {
  if (chat.seen.has(ev.utterance_id)) return;
  chat.seen.add(ev.utterance_id);
  const pending = ev.message_id ? chat.pending.get(ev.message_id) : null;
  if (pending) {
    // the server's copy replaces the optimistic one (sensitive details are masked in it)
    chat.pending.delete(ev.message_id);
    pending.classList.remove("pending");
    pending.querySelector(".body").textContent = ev.text;
    pending.dataset.utteranceId = ev.utterance_id;
    return;
  }
  bubble(ev.speaker === "customer" ? "customer" : "agent", ev.text, { utteranceId: ev.utterance_id });
}

const FRIENDLY = {
  unauthorized: "This chat link is not valid any more. Please open the chat again from our website.",
  forbidden: "This chat link is not valid any more. Please open the chat again from our website.",
  message_too_large: "That message is too long. Please split it into shorter messages.",
  rate_limited: "You're sending messages a little fast. Please wait a moment and try again.",
  content_policy: "We couldn't send that message. Please rephrase it.",
};

function showError(ev) {
  if (ev.code === "session_not_found" && chat.sessionId) {
    // the conversation we tried to resume is gone: start a fresh one on this connection
    chat.sessionId = null;
    sessionStorage.removeItem(SESSION_KEY);
    notice("Your previous conversation has closed; starting a new one.");
    if (chat.ws?.readyState === WebSocket.OPEN) start(chat.ws);
    return;
  }
  if (ev.code === "unauthorized" || ev.code === "forbidden") chat.refused = true;
  if (ev.code === "session_already_started") return; // harmless after a race on reconnect
  // a message the server refused stays marked as not sent
  for (const [id, el] of chat.pending) {
    el.classList.add("failed");
    el.querySelector(".who").textContent = "You · not sent";
    chat.pending.delete(id);
  }
  const text =
    FRIENDLY[ev.code] ||
    (ev.retryable
      ? "Something went wrong on our side. Please try again in a moment."
      : "Sorry, something went wrong with that message.");
  notice(text, { error: true, testid: "error-notice" });
}

function finish() {
  chat.ended = true;
  chat.live = false;
  sessionStorage.removeItem(SESSION_KEY);
  setComposer(false);
  setStatus("ended", "closed");
  notice("This conversation has ended. Thank you for chatting with us.", { testid: "ended-notice" });
  $("restart").hidden = false;
  $("end").hidden = true;
}

// ------------------------------------------------------------------ wiring

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const area = $("text");
  const text = area.value.trim();
  if (!text) return;
  const messageId = newId("m");
  if (!send({ type: "chat.message", text, message_id: messageId })) {
    notice("You're offline right now; your message was not sent. We're reconnecting.", { error: true });
    return;
  }
  const el = bubble("customer", text, { messageId });
  el.classList.add("pending");
  chat.pending.set(messageId, el);
  area.value = "";
});

$("text").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});

$("end").addEventListener("click", () => {
  if (!send({ type: "session.end" })) finish();
});

$("restart").addEventListener("click", () => {
  chat.ended = false;
  chat.sessionId = null;
  chat.everConnected = false;
  chat.seen.clear();
  $("messages").replaceChildren();
  $("restart").hidden = true;
  $("end").hidden = false;
  connect();
});

window.addEventListener("online", () => {
  if (!chat.live && !chat.ended && !chat.refused) connect();
});

connect();
