// umbra serve's web UI: plain JavaScript over the API (docs/api.md). The
// token is kept for this tab only (sessionStorage) and sent as a bearer
// token; nothing is loaded from anywhere but this daemon.
"use strict";

const api = "/api/v1";
let token = sessionStorage.getItem("umbra-token") || "";
let refresh = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function call(path, opts = {}) {
  const r = await fetch(api + path, { ...opts, headers: { Authorization: "Bearer " + token, ...(opts.headers || {}) } });
  if (r.status === 401) {
    showLogin("The token was refused.");
    throw new Error("unauthorized");
  }
  const body = await r.json();
  if (!r.ok && r.status !== 409) throw new Error(body.error || r.statusText);
  return { status: r.status, body };
}

function showLogin(msg) {
  $("login").hidden = false;
  $("view").replaceChildren();
  $("login-error").textContent = msg || "";
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("umbra-token", token);
  $("login").hidden = true;
  route();
});

function size(n) {
  if (n === undefined || n === null) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
const when = (t) => (t && !t.startsWith("0001") ? new Date(t).toLocaleString() : "-");
const secs = (r) => (r.ended ? ((new Date(r.ended) - new Date(r.started)) / 1000).toFixed(1) + " s" : "running");
const statusClass = (s) => ({ ok: "ok", warning: "warn", running: "muted" })[s] || "bad";
const statusOf = (r) => el("span", { class: "status " + statusClass(r.status), "data-status": r.status }, r.status);

async function jobsView() {
  const { body: jobs } = await call("/jobs");
  const rows = jobs.map((j) =>
    el("tr", { "data-job": j.name },
      el("td", {}, el("a", { href: "#/jobs/" + encodeURIComponent(j.name) }, j.name)),
      el("td", {}, j.schedule || el("span", { class: "muted" }, "on request")),
      el("td", {}, j.writers.join(", ")),
      el("td", {}, when(j.next_run)),
      el("td", { class: "last" }, j.running ? el("a", { href: "#/runs/" + j.running.id }, statusOf(j.running))
        : j.last_run ? [el("a", { href: "#/runs/" + j.last_run.id }, statusOf(j.last_run)), " ", when(j.last_run.ended)] : "-"),
      el("td", {}, j.last_success ? when(j.last_success.ended) : "never"),
      el("td", {}, el("button", { class: "run", "data-job": j.name, onclick: () => runJob(j.name) }, "Run now"))));
  return [
    el("h2", {}, "Jobs"),
    el("table", { id: "jobs" },
      el("thead", {}, el("tr", {}, ["Job", "Schedule", "Writers", "Next run", "Last run", "Last success", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)),
  ];
}

async function runJob(name) {
  const { status, body } = await call("/jobs/" + encodeURIComponent(name) + "/run", { method: "POST" });
  if (body.id) location.hash = "#/runs/" + body.id;
  else if (status === 409 && body.run) location.hash = "#/runs/" + body.run.id;
  else route();
}

function chart(title, points, fmt) {
  const w = 320, h = 90;
  if (points.length < 2) return el("div", { class: "chart" }, el("h4", {}, title), el("p", { class: "muted" }, "needs two runs"));
  const max = Math.max(...points) || 1;
  const xy = points.map((v, i) => `${(i / (points.length - 1)) * (w - 10) + 5},${h - 5 - (v / max) * (h - 10)}`).join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h); svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", xy);
  svg.append(line);
  return el("div", { class: "chart" }, el("h4", {}, title, el("span", { class: "muted" }, "  max " + fmt(max))), svg);
}

async function jobView(name) {
  const { body: runs } = await call("/runs?job=" + encodeURIComponent(name) + "&limit=200");
  const ended = runs.filter((r) => r.ended).reverse();
  return [
    el("h2", {}, "Job " + name, " ", el("button", { class: "run", onclick: () => runJob(name) }, "Run now")),
    el("div", { class: "charts" },
      chart("Duration", ended.map((r) => (new Date(r.ended) - new Date(r.started)) / 1000), (v) => v.toFixed(1) + " s"),
      chart("Added to the repository", ended.map((r) => r.bytes_added), size),
      chart("Freeze window", ended.map((r) => r.freeze_ms), (v) => v.toFixed(1) + " ms")),
    el("h3", {}, "Runs"),
    runsTable(runs),
  ];
}

function runsTable(runs) {
  return el("table", { id: "runs" },
    el("thead", {}, el("tr", {}, ["Run", "Trigger", "Started", "Took", "Status", "Read", "Added", "Freeze", "Backup"].map((h) => el("th", {}, h)))),
    el("tbody", {}, runs.map((r) => el("tr", {},
      el("td", {}, el("a", { class: "id", href: "#/runs/" + r.id }, r.id)),
      el("td", {}, r.trigger),
      el("td", {}, when(r.started)),
      el("td", { class: "num" }, secs(r)),
      el("td", {}, statusOf(r)),
      el("td", { class: "num" }, size(r.bytes_read)),
      el("td", { class: "num" }, size(r.bytes_added)),
      el("td", { class: "num" }, (r.freeze_ms || 0).toFixed(1) + " ms"),
      el("td", { class: "id" }, r.backup ? r.backup.slice(0, 8) : "-")))));
}

// runView follows a run: the events stream (read with fetch, which can
// send the token, unlike EventSource) until the run ends.
async function runView(id) {
  const box = el("div", { id: "run", "data-run": id });
  const render = (p) => {
    const r = p.run;
    // replaceChildren would print null and arrays: el() leaves them out.
    box.replaceChildren(...el("div", {},
      el("h2", {}, r.job ? ["Run ", el("span", { class: "id" }, r.id), " of ", el("a", { href: "#/jobs/" + encodeURIComponent(r.job) }, r.job)]
        : [r.kind === "restore" ? "Restore " : "Verification ", el("span", { class: "id" }, r.id)]),
      r.target ? el("p", {}, "Into ", el("code", { id: "target" }, r.target)) : null,
      el("p", {}, "Status: ", statusOf(r), "  ", el("span", { class: "muted" }, r.trigger + ", started " + when(r.started) + ", " + secs(r))),
      r.kind === "backup" ? el("p", { class: "progress" }, `${p.files} files, ${size(p.bytes_read)} read, ${size(p.bytes_added)} added`)
        : r.kind === "restore" ? el("p", { class: "progress" }, `${p.files} files, ${size(p.bytes_read)} restored`) : null,
      r.backup ? el("p", {}, "Backup ", el("span", { class: "id", id: "backup-id" }, r.backup)) : null,
      r.writers ? el("ul", {}, r.writers.map((w) => el("li", {}, `${w.name}: ${w.failed ? "FAILED " + (w.error || "") : w.consistency}`))) : null,
      r.freeze_ms ? el("p", {}, `Freeze window: ${r.freeze_ms.toFixed(1)} ms`) : null,
      r.verified !== undefined ? el("p", {}, "Verification: ", el("span", { class: r.verified ? "ok" : "bad" }, r.verified ? "passed" : "FAILED")) : null,
      r.error ? el("pre", { class: "error" }, r.error) : null,
      r.warnings ? el("ul", { class: "warn" }, r.warnings.map((w) => el("li", {}, w))) : null,
      r.log ? [el("h3", {}, "Log"), el("pre", { class: "log", id: "log" }, r.log.join("\n"))] : null).childNodes);
  };
  const { body } = await call("/runs/" + encodeURIComponent(id));
  render(body);
  if (body.run.status === "running") follow(id, render);
  return [box];
}

async function follow(id, render) {
  const r = await fetch(api + "/runs/" + encodeURIComponent(id) + "/events", { headers: { Authorization: "Bearer " + token } });
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = ev.split("\n").find((l) => l.startsWith("data: "));
      if (data && location.hash === "#/runs/" + id) render(JSON.parse(data.slice(6)));
    }
  }
}

async function backupsView() {
  const { body: backups } = await call("/backups");
  const rows = backups.slice().reverse().map((b) => {
    const app = b.extra && b.extra.writers ? b.extra : null; // an application backup's record
    const writers = app && app.writers ? app.writers.map((w) => `${w.name} (${w.failed ? "failed" : w.consistency})`).join(", ") : "-";
    const v = b.verification;
    return el("tr", {},
      el("td", { class: "id" }, b.id.slice(0, 8)),
      el("td", {}, when(b.time)),
      el("td", {}, b.host),
      el("td", { class: "num" }, size(b.stats.bytes)),
      el("td", { class: "num" }, size(b.stats.bytes_added)),
      el("td", { class: "num" }, app ? app.freeze_ms.toFixed(1) + " ms" : "-"),
      el("td", {}, v ? el("span", { class: v.ok ? "ok" : "bad" }, v.ok ? "ok" : "FAILED") : el("span", { class: "muted" }, "not verified")),
      el("td", {}, writers),
      el("td", {}, (b.paths || []).join(" ")),
      el("td", {},
        app ? el("button", { class: "verify", "data-backup": b.id, onclick: () => operate(b.id, "verify") }, "Verify") : null, " ",
        el("button", { class: "restore", "data-backup": b.id, onclick: () => restoreTo(b.id) }, "Restore to…")));
  });
  return [
    el("h2", {}, "Backups"),
    el("table", { id: "backups" },
      el("thead", {}, el("tr", {}, ["ID", "Time", "Host", "Size", "Added", "Freeze", "Verified", "Writers", "Paths", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)),
  ];
}

async function operate(id, what, body) {
  const { body: run } = await call("/backups/" + id + "/" + what, { method: "POST", body: body ? JSON.stringify(body) : undefined });
  location.hash = "#/runs/" + run.id;
}

// restoreTo asks where, and asks again before it starts: a restore writes
// only under a new or empty directory, never over live data.
async function restoreTo(id) {
  const target = prompt("Restore backup " + id.slice(0, 8) + " under which directory? (absolute; new or empty: nothing is overwritten)");
  if (!target) return;
  if (!confirm("Restore backup " + id.slice(0, 8) + " under " + target + "?")) return;
  try {
    await operate(id, "restore", { target });
  } catch (e) {
    alert(e.message);
  }
}

async function route() {
  clearInterval(refresh);
  if (!token) return showLogin();
  const hash = location.hash || "#/jobs";
  const [, page, arg] = hash.split("/").map(decodeURIComponent);
  try {
    let nodes;
    if (page === "runs" && arg) nodes = await runView(arg);
    else if (page === "jobs" && arg) nodes = await jobView(arg);
    else if (page === "backups") nodes = await backupsView();
    else {
      nodes = await jobsView();
      refresh = setInterval(async () => { if ((location.hash || "#/jobs") === "#/jobs") $("view").replaceChildren(...await jobsView()); }, 2000);
    }
    $("view").replaceChildren(...nodes);
    const { body: st } = await call("/status");
    $("status").textContent = `umbra ${st.version}, up since ${when(st.started)}, ${st.running} running`;
  } catch (e) {
    if (e.message !== "unauthorized") $("view").replaceChildren(el("pre", { class: "error" }, e.message));
  }
}

window.addEventListener("hashchange", route);
route();
