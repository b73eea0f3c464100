// The dashboard page: renders each snapshot the server pushes over SSE, and sends the
// chaos / kill / restart controls with the token the user typed (kept for this tab only).
"use strict";

const TOKEN_KEY = "shipyard-chaos-token";
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let chaosServices = "";  // the chaos form is rebuilt only when the services change

const $ = (selector) => document.querySelector(selector);

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function percent(rate) {
  return rate === null || rate === undefined ? "—" : `${(rate * 100).toFixed(1)}%`;
}

function badge(text, cls) {
  return `<span class="badge ${esc(cls ?? text)}">${esc(text)}</span>`;
}

function faultText(faults) {
  if (faults === null || faults === undefined) {
    return '<span class="muted" title="no chaos endpoint, or no token configured">n/a</span>';
  }
  if (!faults.length) return '<span class="muted">none</span>';
  return faults.map((f) => {
    const parts = [];
    if (f.latency) parts.push(`+${Math.round(f.latency * 1000)} ms`);
    if (f.error_rate) parts.push(`${Math.round(f.error_rate * 100)}% → ${f.error_status}`);
    if (f.refuse) parts.push(`refuse (${f.refuse})`);
    return `${esc(f.path_prefix)}: ${esc(parts.join(", "))}`;
  }).join("<br>");
}

function processButtons(process, canControl) {
  if (!process || !canControl) return "";
  const id = esc(process.id);
  return `<button class="danger" data-kill="${id}" ${process.running ? "" : "disabled"}>kill</button>
    <button data-restart="${id}">restart</button>`;
}

function renderServices(snapshot) {
  const processes = new Map((snapshot.processes || []).map((p) => [p.id, p]));
  const rows = [];
  for (const service of snapshot.services) {
    rows.push(`<tr class="service" data-service="${esc(service.name)}">
      <td>${esc(service.name)}</td><td>${badge(service.status)}</td>
      <td colspan="5" class="muted">${service.instances.length} instance(s)</td></tr>`);
    for (const inst of service.instances) {
      const req = inst.requests;
      const checks = inst.checks.map((c) => `${esc(c.name)}: ${esc(c.status)}`).join("\n");
      rows.push(`<tr class="instance" data-instance="${esc(inst.id)}" data-status="${esc(inst.status)}">
        <td>${esc(inst.id)}<br><span class="muted">${esc(inst.address)}:${inst.port}</span></td>
        <td title="${checks}">${badge(inst.status)}</td>
        <td>${req ? req.total : `<span class="error" title="${esc(inst.metrics_error)}">no metrics</span>`}</td>
        <td>${req && req.per_second !== null ? req.per_second.toFixed(1) : "—"}</td>
        <td>${req ? percent(req.error_rate) : "—"}</td>
        <td data-faults>${faultText(inst.faults)}</td>
        <td>${processButtons(processes.get(inst.id), snapshot.control)}</td></tr>`);
    }
  }
  if (!rows.length) rows.push('<tr><td colspan="7" class="muted">no services registered</td></tr>');
  $("#services tbody").innerHTML = rows.join("");
}

function renderChaos(snapshot) {
  $("#chaos-section").hidden = !snapshot.control;
  const names = snapshot.services.map((s) => s.name);
  if (names.join("\n") === chaosServices) return;
  chaosServices = names.join("\n");
  $("#chaos tbody").innerHTML = names.map((name) => `<tr data-chaos="${esc(name)}">
    <td>${esc(name)}</td>
    <td><input type="number" min="0" step="50" value="0" name="latency" aria-label="latency of ${esc(name)} in ms"></td>
    <td><input type="number" min="0" max="100" step="5" value="0" name="error_rate" aria-label="error rate of ${esc(name)} in percent"></td>
    <td><button data-inject="${esc(name)}">inject</button>
      <button data-clear="${esc(name)}">clear</button></td></tr>`).join("");
}

// Gateway breakers guard an upstream service; a client's per-instance breakers are named
// "<service>/<instance id>" and sit beside its service breaker.
function breakerName(b) {
  if (b.source === "gateway") return `${esc(b.name)} <span class="muted">(gateway)</span>`;
  const slash = b.name.indexOf("/");
  if (slash < 0) return esc(b.name);
  return `${esc(b.name.slice(0, slash))}<br><span class="muted">instance ${esc(b.name.slice(slash + 1))}</span>`;
}

function renderBreakers(snapshot) {
  const rows = [];
  for (const service of snapshot.services) {
    for (const inst of service.instances) {
      for (const b of inst.breakers) {
        rows.push(`<tr data-breaker="${esc(b.name)}" data-state="${esc(b.state)}">
          <td class="id">${breakerName(b)}</td>
          <td class="id">${esc(inst.id)}</td><td>${badge(b.state.replace("_", "-"), b.state)}</td>
          <td>${percent(b.failure_rate)}</td><td>${b.successes}</td><td>${b.failures}</td>
          <td>${b.rejected}</td></tr>`);
      }
    }
  }
  if (!rows.length) rows.push('<tr><td colspan="7" class="muted">no breakers exported</td></tr>');
  $("#breakers tbody").innerHTML = rows.join("");
}

function renderLimiters(snapshot) {
  const rows = [];
  for (const service of snapshot.services) {
    for (const inst of service.instances) {
      for (const l of inst.limiters) {
        rows.push(`<tr data-limiter="${esc(l.name)}"><td>${esc(l.name)}</td><td class="id">${esc(inst.id)}</td>
          <td>${l.allowed ?? "—"}</td><td>${l.rejected}</td></tr>`);
      }
    }
  }
  if (!rows.length) rows.push('<tr><td colspan="4" class="muted">no rate limiters exported</td></tr>');
  $("#limiters tbody").innerHTML = rows.join("");
}

// One row per instance and database; each pool as "name in use / size", waiting callers
// and rejections (since the instance started) added when there are any.
function renderPools(snapshot) {
  const rows = [];
  for (const service of snapshot.services) {
    for (const inst of service.instances) {
      const byDatabase = new Map();
      for (const p of inst.pools || []) {
        if (!byDatabase.has(p.database)) byDatabase.set(p.database, []);
        byDatabase.get(p.database).push(p);
      }
      for (const [database, pools] of byDatabase) {
        const cells = pools.map((p) => {
          const state = p.rejected ? "open" : p.waiting ? "half_open" : "closed";
          const extra = [p.waiting ? `${p.waiting} waiting` : "", p.rejected ? `${p.rejected} rejected` : ""]
            .filter(Boolean).join(", ");
          return `<span class="badge ${state}" data-pool="${esc(database)}/${esc(p.pool)}"
            title="${esc(p.pool)}: ${p.in_use} of ${p.size} in use, ${p.waiting} waiting, ${p.rejected} rejected">
            ${esc(p.pool)} ${p.in_use}/${p.size}${extra ? ` (${esc(extra)})` : ""}</span>`;
        });
        rows.push(`<tr data-instance="${esc(inst.id)}" data-database="${esc(database)}">
          <td class="id">${esc(inst.id)}</td><td>${esc(database)}</td><td>${cells.join(" ")}</td></tr>`);
      }
    }
  }
  if (!rows.length) rows.push('<tr><td colspan="3" class="muted">no database pools exported</td></tr>');
  $("#pools tbody").innerHTML = rows.join("");
}

// Compact timeline: what each step ended as (✓ done, ✗ failed, ↩ compensated); the
// full entry, with its error, is in the tooltip.
const TIMELINE_MARKS = {
  step_completed: ["", "✓"], step_failed: ["failed", "✗"], step_attempt_failed: ["failed", "✗?"],
  compensation_completed: ["compensation", "↩"], compensation_attempt_failed: ["failed", "↩✗"],
  command_sent: ["", "→"], alert: ["failed", "⚠"],
};

function timelineText(timeline) {
  return timeline.flatMap((t) => {
    const title = esc(`${t.kind}${t.step ? ` ${t.step}` : ""}${t.error ? `: ${t.error}` : ""}`);
    if (t.kind === "completed" || t.kind === "compensated") {
      return [`<span class="${t.kind === "compensated" ? "compensation" : ""}" title="${title}">${esc(t.kind)}</span>`];
    }
    const mark = TIMELINE_MARKS[t.kind];
    if (!mark) return [];  // started / step_started / compensation_started: implied by the next entry
    const [cls, sign] = mark;
    const label = sign === "↩" || sign === "↩✗" ? `${sign} ${t.step}` : `${t.step} ${sign}`;
    return [`<span class="${cls}" title="${title}">${esc(label)}</span>`];
  }).join(" → ");
}

function renderSagas(snapshot) {
  const sagas = snapshot.sagas;
  const error = $("#saga-error");
  if (!sagas) {
    error.hidden = false;
    error.textContent = "no saga query API configured";
    return;
  }
  error.hidden = !sagas.error;
  error.textContent = sagas.error || "";
  $("#saga-counts").innerHTML = Object.entries(sagas.counts).map(([state, n]) =>
    `<span class="badge ${esc(state)}" data-saga-state="${esc(state)}" data-count="${n}">
      ${esc(state.toLowerCase())}: ${n >= sagas.count_limit ? `${n}+` : n}</span>`).join("");
  const rows = sagas.recent.map((s) => `<tr data-saga="${esc(s.saga_id)}" data-state="${esc(s.state)}">
    <td class="id">${esc(s.name)}<br><span class="muted">${esc(s.saga_id)}</span></td>
    <td>${badge(s.state)}</td>
    <td>${esc(s.failed_step || "")}${s.error ? `<br><span class="error">${esc(s.error.slice(0, 120))}</span>` : ""}</td>
    <td class="timeline">${timelineText(s.timeline)}</td></tr>`);
  if (!rows.length) rows.push('<tr><td colspan="4" class="muted">no sagas yet</td></tr>');
  $("#sagas tbody").innerHTML = rows.join("");
}

function renderFlows(snapshot) {
  const rows = snapshot.flows.map((f) => `<tr><td>${esc(f.source)}</td><td>${esc(f.target)}</td>
    <td>${Object.entries(f.counts).map(([k, n]) => `${esc(k.replace("_", " "))}: ${n}`).join(", ")}</td></tr>`);
  if (!rows.length) rows.push('<tr><td colspan="3" class="muted">no events seen yet</td></tr>');
  $("#flows tbody").innerHTML = rows.join("");
}

function renderProcesses(snapshot) {
  const processes = snapshot.processes;
  $("#process-section").hidden = !processes;
  if (!processes) return;
  $("#processes tbody").innerHTML = processes.map((p) => `<tr data-process="${esc(p.id)}">
    <td class="id">${esc(p.id)}</td><td>${esc(p.service)}</td>
    <td>${p.running ? badge(`running (pid ${p.pid ?? "?"})`, "passing") : badge("stopped", "critical")}</td>
    <td>${processButtons(p, snapshot.control)}</td></tr>`).join("");
}

function render(snapshot) {
  document.body.dataset.version = snapshot.version;
  $("#updated").textContent = `updated ${new Date(snapshot.taken_at * 1000).toLocaleTimeString()}`;
  const registryError = $("#registry-error");
  registryError.hidden = !snapshot.registry_error;
  registryError.textContent = snapshot.registry_error ? `registry: ${snapshot.registry_error}` : "";
  $("#token-form").hidden = !snapshot.control;
  renderServices(snapshot);
  renderChaos(snapshot);
  renderBreakers(snapshot);
  renderLimiters(snapshot);
  renderPools(snapshot);
  renderSagas(snapshot);
  renderFlows(snapshot);
  renderProcesses(snapshot);
}

async function control(path, body) {
  const status = $("#control-status");
  if (!token) {
    status.textContent = "Enter the chaos token first.";
    status.className = "error";
    return;
  }
  status.textContent = `sending ${path}…`;
  status.className = "muted";
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json", "x-chaos-token": token },
      body: JSON.stringify(body ?? {}),
    });
    const answer = await response.json();
    status.textContent = response.ok
      ? `done: ${path}`
      : `failed (${response.status}): ${answer.error || JSON.stringify(answer.instances)}`;
    status.className = response.ok ? "muted" : "error";
  } catch (error) {
    status.textContent = `failed: ${error}`;
    status.className = "error";
  }
}

document.addEventListener("click", (event) => {
  const target = event.target.closest("button");
  if (!target) return;
  const d = target.dataset;
  if (d.inject) {
    const row = target.closest("tr");
    const latency = Number(row.querySelector("[name=latency]").value) / 1000;
    const errorRate = Number(row.querySelector("[name=error_rate]").value) / 100;
    const body = {};
    if (latency > 0) body.latency = latency;
    if (errorRate > 0) body.error_rate = Math.min(errorRate, 1);
    control(`api/chaos/${encodeURIComponent(d.inject)}`, body);
  } else if (d.clear) {
    // The inputs say what the next "inject" sends: after a clear that is nothing.
    for (const input of target.closest("tr").querySelectorAll("input")) input.value = "0";
    control(`api/chaos/${encodeURIComponent(d.clear)}`, { clear: true });
  } else if (d.kill) {
    control(`api/instances/${encodeURIComponent(d.kill)}/kill`);
  } else if (d.restart) {
    control(`api/instances/${encodeURIComponent(d.restart)}/restart`);
  }
});

$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#control-status").textContent = token ? "token set for this tab" : "token cleared";
});
$("#token").value = token;

function connect() {
  const connection = $("#connection");
  const events = new EventSource("api/events");
  events.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
  events.addEventListener("open", () => {
    connection.textContent = "live";
    connection.className = "badge live";
  });
  // EventSource reconnects by itself; say so meanwhile.
  events.addEventListener("error", () => {
    connection.textContent = "reconnecting…";
    connection.className = "badge down";
  });
}

connect();
