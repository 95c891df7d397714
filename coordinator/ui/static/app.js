// The dashboard: sign-in, federations list, one federation live. Plain DOM, no framework.
import { ApiError, download, get, post, role, streamEvents, token } from "./api.js";
import { colour, drawChart } from "./charts.js";

const main = document.getElementById("main");
const notice = document.getElementById("notice");
const live = document.getElementById("live");
const FINISHED = new Set(["completed", "cancelled"]);
const PROTOTYPE_ALGORITHMS = new Set(["mfcpl", "fedproto", "pmcmfl"]);

// h("tr", {dataset: {round: 3}}, "text", child, ...): an element; text is always text, never HTML.
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") Object.assign(el.style, value);  // CSSOM, allowed by the CSP (no style attribute)
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) el[key] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const pill = (status) => h("span", { className: `status ${status}` }, status);
const show = (message) => { notice.textContent = message || ""; };

function ago(iso, now = Date.now()) {
  if (!iso) return "never";
  const s = Math.round((now - Date.parse(iso)) / 1000);
  return s < 60 ? `${s}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
}

function seconds(ms) {
  const s = Math.max(0, ms / 1000);
  return s < 60 ? `${s.toFixed(s < 10 ? 1 : 0)}s` : s < 3600 ? `${Math.floor(s / 60)}m ${Math.floor(s % 60)}s`
    : `${(s / 3600).toFixed(1)}h`;
}

function bytes(n) {
  return n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / (1 << 20)).toFixed(1)} MiB`;
}

// ---------------------------------------------------------------- sign-in and routing

let teardown = () => {};

function signIn(message = "", askFederation = false) {
  teardown();
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  const tokenInput = h("input", { type: "password", name: "token", id: "token", autocomplete: "off", required: true,
                                  spellcheck: false });
  const fidInput = h("input", { type: "text", name: "federation", id: "federation", autocomplete: "off",
                                placeholder: "fed_..." });
  const form = h("form", { className: "signin", onsubmit: async (event) => {
    event.preventDefault();
    token.set(tokenInput.value.trim());
    tokenInput.value = "";
    const fid = fidInput.value.trim();
    if (fid) { role.set("client"); location.hash = `#/f/${encodeURIComponent(fid)}`; }
    await route();
  } },
  h("h1", {}, "Sign in"),
  h("p", { className: "muted" }, "Paste an admin, viewer or client token. It stays in this tab only."),
  h("label", { htmlFor: "token" }, "Bearer token"), tokenInput,
  h("div", { hidden: !askFederation },
    h("label", { htmlFor: "federation" }, "Federation id (a client token sees its own federation only)"), fidInput),
  h("button", { type: "submit", id: "signin" }, "Sign in"),
  h("p", { className: "muted", id: "signin-message" }, message));
  main.replaceChildren(form);
  tokenInput.focus();
}

async function route() {
  teardown();
  teardown = () => {};
  show("");
  if (!token.get()) return signIn();
  document.getElementById("signout").hidden = false;
  const match = location.hash.match(/^#\/f\/([^/]+)$/);
  try {
    if (match) await federationView(decodeURIComponent(match[1]));
    else await listView();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      token.clear();
      return signIn("That token was not accepted (401).");
    }
    show(error.message);
  }
}

// ---------------------------------------------------------------- federations list

async function listView() {
  let federations;
  try {
    federations = await get("/federations");
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {  // a client token: one federation only
      role.set("client");
      document.getElementById("who").textContent = "client token";
      return signIn("This token cannot list federations: give the id of its federation.", true);
    }
    throw error;
  }
  if (!role.get()) role.set("operator");
  document.getElementById("who").textContent = role.get() === "reader" ? "read-only token" : "";
  const body = h("tbody");
  const render = (items) => body.replaceChildren(...items.map((f) => h("tr", { dataset: { fid: f.id } },
    h("td", {}, h("a", { href: `#/f/${encodeURIComponent(f.id)}` }, f.config.name)),
    h("td", { className: "muted" }, f.id),
    h("td", {}, pill(f.status)),
    h("td", { className: "muted" }, f.status_reason || ""),
    h("td", { className: "num" }, f.current_round ?? "-", " / ", f.config.rounds),
    h("td", {}, f.config.algorithm))));
  render(federations);
  main.replaceChildren(h("h1", {}, "Federations"), federations.length ? h("table", { id: "federations" },
    h("thead", {}, h("tr", {}, ["name", "id", "status", "why", "round", "algorithm"].map((t) => h("th", {}, t)))),
    body) : h("p", { className: "muted" }, "No federations yet."));
  const timer = setInterval(async () => {
    try { render(await get("/federations")); } catch (error) { show(error.message); }
  }, 5000);
  teardown = () => clearInterval(timer);
}

// ---------------------------------------------------------------- one federation

async function federationView(fid) {
  const path = `/federations/${encodeURIComponent(fid)}`;
  const state = { federation: null, rounds: [], metrics: [], clients: null, models: [], prototypes: new Map() };
  const canSteer = () => !["client", "reader"].includes(role.get());
  document.getElementById("who").textContent =
    role.get() === "client" ? "client token" : role.get() === "reader" ? "read-only token" : "";

  const el = {
    title: h("h1", {}), status: h("span", { id: "status" }), reason: h("span", { id: "status-reason", className: "muted" }),
    actions: h("div", { className: "actions", id: "actions" }),
    round: h("div", { className: "big", id: "current-round" }, "-"),
    received: h("div", { className: "big", id: "received" }, "-"),
    deadline: h("div", { className: "big", id: "deadline" }, "-"),
    model: h("div", { className: "big", id: "latest-model" }, "-"),
    charts: h("div", { className: "charts", id: "charts" }),
    rounds: h("tbody", { id: "rounds" }), clients: h("tbody", { id: "clients" }), models: h("tbody", { id: "models" }),
    clientsNote: h("p", { className: "muted" }),
  };
  const table = (heads, body) => h("table", {}, h("thead", {}, h("tr", {}, heads.map((t) =>
    h("th", { className: /^(participants|received|duration|rounds joined|size|version)$/.test(t) ? "num" : "" }, t)))), body);
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "\u2190 federations")),
    el.title, h("div", {}, el.status, " ", el.reason), el.actions,
    h("div", { className: "cards" },
      h("div", { className: "card" }, h("div", { className: "muted" }, "round"), el.round),
      h("div", { className: "card" }, h("div", { className: "muted" }, "updates received / participants"), el.received),
      h("div", { className: "card" }, h("div", { className: "muted" }, "deadline in"), el.deadline),
      h("div", { className: "card" }, h("div", { className: "muted" }, "latest model version"), el.model)),
    h("h2", {}, "Per round"), el.charts,
    h("h2", {}, "Rounds"), table(["round", "state", "participants", "received", "quorum", "duration", "failure reason"], el.rounds),
    h("h2", {}, "Clients"), el.clientsNote,
    table(["name", "last seen", "lease", "modalities", "rounds joined"], el.clients),
    h("h2", {}, "Model versions"), table(["version", "from round", "size", "created", ""], el.models));

  // -- rendering
  function renderFederation() {
    const f = state.federation;
    el.title.textContent = `${f.config.name} `;
    el.title.append(h("span", { className: "muted" }, f.id));
    el.status.replaceChildren(pill(f.status));
    el.status.dataset.status = f.status;
    el.reason.textContent = f.status_reason || "";
    el.round.textContent = `${f.current_round ?? "-"} / ${f.config.rounds}`;
    el.round.dataset.round = f.current_round ?? 0;
    el.model.textContent = f.latest_model_version ?? "-";
    renderActions();
  }

  function renderActions() {
    const f = state.federation;
    if (!canSteer() || !f) { el.actions.replaceChildren(); el.actions.hidden = true; return; }
    el.actions.hidden = false;
    const button = (name, label, enabled, extra = "") => h("button", { type: "button", id: name, className: extra,
      disabled: !enabled, onclick: () => steer(name) }, label);
    el.actions.replaceChildren(
      button("pause", "Pause", ["running", "waiting"].includes(f.status)),
      button("resume", "Resume", f.status === "paused"),
      button("cancel", "Cancel", !FINISHED.has(f.status), "danger"));
  }

  async function steer(action) {
    if (action === "cancel" && !confirm("Cancel this federation? This cannot be undone.")) return;
    try {
      state.federation = await post(`${path}/${action}`);
      renderFederation();
      show("");
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) {
        role.set("reader");
        renderActions();
        show("This token can watch but not steer federations.");
      } else show(error.message);
    }
  }

  function currentRound() {
    const n = state.federation?.current_round;
    return state.rounds.find((r) => r.number === n);
  }

  function renderCurrent() {
    const r = currentRound();
    el.received.textContent = r ? `${r.received} / ${r.participants.length}` : "-";
    const open = r && r.state === "open";
    el.deadline.textContent = open ? seconds(Date.parse(r.deadline) - Date.now()) : r ? r.state : "-";
  }

  function renderRounds() {
    const rows = [...state.rounds].sort((a, b) => b.number - a.number).map((r) => {
      const end = r.closed_at ? Date.parse(r.closed_at) : Date.now();
      return h("tr", { dataset: { round: r.number, state: r.state } },
        h("td", {}, r.number), h("td", {}, pill(r.state)),
        h("td", { className: "num" }, r.participants.length), h("td", { className: "num" }, r.received),
        h("td", { className: "num" }, r.quorum),
        h("td", { className: "num" }, seconds(end - Date.parse(r.opened_at)), r.closed_at ? "" : " \u2026"),
        h("td", { className: "muted" }, r.failure_reason || ""));
    });
    el.rounds.replaceChildren(...rows);
    renderCurrent();
  }

  function renderClients() {
    if (state.clients === null) return;
    const joined = new Map();
    for (const r of state.rounds) for (const id of r.participants) joined.set(id, (joined.get(id) || 0) + 1);
    const now = Date.now();
    el.clients.replaceChildren(...state.clients.map((c) => {
      const lease = c.revoked ? "revoked" : !c.lease_expires_at ? "-"
        : Date.parse(c.lease_expires_at) > now ? `live, ${seconds(Date.parse(c.lease_expires_at) - now)} left` : "expired";
      return h("tr", { dataset: { client: c.id } }, h("td", {}, c.name), h("td", {}, ago(c.last_seen_at, now)),
        h("td", {}, lease), h("td", {}, (c.modalities || []).join(", ") || "none"),
        h("td", { className: "num" }, joined.get(c.id) || 0));
    }));
  }

  function renderModels() {
    el.models.replaceChildren(...[...state.models].sort((a, b) => b.version - a.version).map((m) =>
      h("tr", { dataset: { version: m.version } },
        h("td", { className: "num" }, m.version), h("td", {}, m.round ?? "initial"),
        h("td", { className: "num" }, bytes(m.size_bytes)), h("td", {}, ago(m.created_at)),
        h("td", {}, h("button", { type: "button", className: "download", onclick: async () => {
          try { await download(`${path}/models/${m.version}/weights`, `${fid}-model-v${m.version}.safetensors`); }
          catch (error) { show(error.message); }
        } }, "Download")))));
  }

  // One chart per evaluation metric (a line per split), per training term, and prototypes (coverage of the
  // complete prototype set each round produced, per level; train terms about prototypes).
  const charts = new Map();
  function chart(key, title, series) {
    let entry = charts.get(key);
    if (!entry) {
      const canvas = h("canvas", { dataset: { chart: key } });
      const legend = h("div", { className: "legend" });
      entry = { canvas, legend, box: h("div", { className: "chart" }, h("h3", {}, title), canvas, legend) };
      charts.set(key, entry);
      el.charts.append(entry.box);
    }
    entry.series = series;
    entry.legend.replaceChildren(...series.map((s, i) => h("span", {}, h("i", { style: { background: colour(i) } }),
      s.name)));
    entry.canvas.dataset.points = drawChart(entry.canvas, series);
  }

  function renderCharts() {
    const evaluations = new Map();  // metric -> split -> points
    const train = new Map();
    for (const m of state.metrics) {
      for (const [split, values] of Object.entries(m.evaluations || {})) {
        for (const [name, value] of Object.entries(values)) {
          if (!evaluations.has(name)) evaluations.set(name, new Map());
          const bySplit = evaluations.get(name);
          if (!bySplit.has(split)) bySplit.set(split, []);
          bySplit.get(split).push([m.round, value]);
        }
      }
      for (const [name, value] of Object.entries(m.train || {})) {
        if (!train.has(name)) train.set(name, []);
        train.get(name).push([m.round, value]);
      }
    }
    for (const [name, bySplit] of [...evaluations].sort()) {
      chart(`eval:${name}`, `evaluation: ${name}`, [...bySplit].sort().map(([split, points]) => ({ name: split, points })));
    }
    const isProto = (name) => /proto|cos|cover/i.test(name);
    for (const [name, points] of [...train].sort()) {
      if (!isProto(name)) chart(`train:${name}`, `training: ${name}`, [{ name, points }]);
    }
    const protoSeries = [...train].filter(([name]) => isProto(name)).map(([name, points]) => ({ name, points }));
    const byLevel = new Map();
    for (const m of state.models) {
      const set = state.prototypes.get(m.version);
      if (!set || m.round == null) continue;
      for (const level of set.levels) {
        if (!byLevel.has(level.name)) byLevel.set(level.name, []);
        const covered = level.coverage.filter(Boolean).length / Math.max(1, level.coverage.length);
        byLevel.get(level.name).push([m.round, covered]);
      }
    }
    for (const [name, points] of byLevel) protoSeries.push({ name: `coverage ${name}`, points });
    if (protoSeries.length) chart("prototypes", "prototypes", protoSeries);
    if (!charts.size) el.charts.replaceChildren(h("p", { className: "muted", id: "no-charts" }, "No metrics yet."));
    else document.getElementById("no-charts")?.remove();
  }

  // -- loading
  const loaders = {
    federation: async () => { state.federation = await get(path); renderFederation(); renderCurrent(); },
    rounds: async () => { state.rounds = await get(`${path}/rounds`); renderRounds(); renderClients(); },
    metrics: async () => { state.metrics = await get(`${path}/metrics`); renderCharts(); },
    clients: async () => {
      try { state.clients = await get(`${path}/clients`); el.clientsNote.textContent = ""; renderClients(); }
      catch (error) {
        if (!(error instanceof ApiError && error.status === 403)) throw error;
        el.clientsNote.textContent = "The client list is visible to the operator only.";
      }
    },
    models: async () => {
      state.models = await get(`${path}/models`);
      const usesPrototypes = PROTOTYPE_ALGORITHMS.has(state.federation?.config.algorithm);
      const missing = state.models.filter((m) => usesPrototypes && m.round != null && !state.prototypes.has(m.version));
      await Promise.all(missing.map(async (m) => {  // immutable: each set is fetched once
        try { state.prototypes.set(m.version, await get(`${path}/prototypes/${m.version}`)); }
        catch (error) { if (error instanceof ApiError && error.status === 404) state.prototypes.set(m.version, null); else throw error; }
      }));
      renderModels(); renderCharts();
    },
  };

  // Coalesce refreshes: a burst of events (the backlog on connect, many updates at once) loads each part once.
  const pending = new Set();
  let flushing = null;
  function refresh(...parts) {
    parts.forEach((p) => pending.add(p));
    if (!flushing) flushing = setTimeout(async () => {
      const parts = [...pending];
      pending.clear();
      try { await Promise.all(parts.map((p) => loaders[p]())); }
      catch (error) { show(error.message); }
      flushing = null;
      if (pending.size) refresh();
    }, 30);
  }

  await loaders.federation();
  await Promise.all([loaders.rounds(), loaders.metrics(), loaders.clients(), loaders.models()]);

  const onEvent = (type, event) => {
    if (type === "update.received" && event?.round != null) {
      const r = state.rounds.find((x) => x.number === event.round);
      if (r && event.data && typeof event.data.received === "number") { r.received = event.data.received; renderRounds(); }
      refresh("rounds");
    } else if (type === "round.opened") refresh("federation", "rounds", "clients");
    else if (type === "round.closed" || type === "round.failed") refresh("federation", "rounds", "metrics", "models");
    else if (type === "federation.status") {
      refresh("federation");
      if (FINISHED.has(event?.data?.status)) stream.stop();
    } else if (type === "federation.waiting") refresh("federation", "clients");
  };
  const stream = streamEvents(fid, { onEvent, onState: (up) => { live.hidden = false; live.classList.toggle("off", !up);
    live.textContent = up ? "live" : "reconnecting"; } });
  stream.done.catch((error) => show(`event stream: ${error.message}`));
  const ticker = setInterval(() => { renderCurrent(); if (currentRound()?.state === "open") renderRounds(); }, 1000);
  const slow = setInterval(() => refresh("clients", "metrics"), 15000);  // evaluations and leases change quietly
  teardown = () => { stream.stop(); clearInterval(ticker); clearInterval(slow); live.hidden = true; };
}

document.getElementById("signout").addEventListener("click", () => { token.clear(); location.hash = "#/"; signIn(); });
window.addEventListener("hashchange", route);
route();
