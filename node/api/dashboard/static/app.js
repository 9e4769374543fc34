// LoRA Node dashboard: polls /dashboard/api/state and renders it.
// Every value from the node (and so from chain: dataset names, endpoints, CIDs) is untrusted: it
// only ever reaches the page through textContent, and links are built from encoded ids only.
"use strict";

const POLL_MS = 2000;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function short(hex) {
  const s = String(hex ?? "");
  return s.length > 18 ? s.slice(0, 10) + "…" + s.slice(-6) : s;
}

function table(id, columns, rows, empty) {
  const t = document.getElementById(id);
  t.replaceChildren();
  const head = el("tr");
  for (const [title] of columns) head.appendChild(el("th", title));
  t.appendChild(head);
  if (rows.length === 0) {
    const tr = el("tr");
    const td = el("td", empty, "muted");
    td.colSpan = columns.length;
    tr.appendChild(td);
    t.appendChild(tr);
  }
  for (const row of rows) {
    const tr = el("tr");
    for (const [, cell] of columns) {
      const v = cell(row);
      const td = el("td");
      if (v instanceof Node) td.appendChild(v); else td.textContent = v === null || v === undefined ? "—" : String(v);
      tr.appendChild(td);
    }
    t.appendChild(tr);
  }
}

function cards(id, entries) {
  const dl = document.getElementById(id);
  dl.replaceChildren();
  for (const [k, v] of entries) {
    const d = el("div");
    d.appendChild(el("dt", k));
    d.appendChild(el("dd", v === null || v === undefined ? "—" : v));
    dl.appendChild(d);
  }
}

function badge(value, prefix) {
  return el("span", value, prefix + "-" + String(value).replace(/[^a-z]/g, ""));
}

function verifyLink(r) {
  const a = el("a", "verify");
  a.href = "/v1/receipts/" + encodeURIComponent(r.request_id);
  a.rel = "noopener noreferrer";
  return a;
}

function render(s) {
  const n = s.node;
  document.getElementById("node-line").textContent =
    `node ${n.address} · chain ${n.chain_id} · base model ${n.base_model} · compute price ${n.compute_price_per_1k} per 1K tokens`;
  document.getElementById("updated").textContent = "updated " + new Date(s.generated_at * 1000).toLocaleTimeString();
  const e = s.earnings;
  cards("earnings", [["compute signed", e.compute_signed], ["adapter fees signed", e.adapter_signed],
    ["vouchers redeemed", e.vouchers_redeemed], ["claimable in RewardVault", e.claimable]]);
  const st = s.settlement;
  const outbox = Object.entries(st.outbox).map(([k, v]) => `${k}: ${v}`).join(", ") || "empty";
  const loops = Object.entries(st.background).map(([k, v]) => `${k}: ${v}`).join(", ") || "none";
  cards("settlement", [["receipts not committed", st.pending_receipts], ["settlement lag (s)", st.lag_seconds],
    ["outbox", outbox], ["last failed tx", st.last_failure ? st.last_failure.join(": ") : "none"], ["loops", loops]]);
  table("adapters", [
    ["model", (a) => a.model], ["state", (a) => badge(a.state, "state")], ["reason", (a) => a.reason],
    ["price / 1K", (a) => a.price_per_1k], ["requests", (a) => a.requests], ["tokens", (a) => a.tokens],
    ["revenue", (a) => a.revenue], ["owner", (a) => el("span", a.owner, "mono")], ["cid", (a) => el("span", short(a.cid), "mono")],
  ], s.adapters, "no adapters registered for this node's base model yet");
  table("receipts", [
    ["seq", (r) => r.seq], ["request", (r) => el("span", short(r.request_id), "mono")],
    ["model", (r) => (r.adapter_id ? "adapter-" + r.adapter_id : "base")], ["payer", (r) => el("span", short(r.payer), "mono")],
    ["tokens", (r) => r.tokens], ["cost", (r) => r.cost], ["status", (r) => badge(r.status, "status")],
    ["batch", (r) => r.batch_seq], ["", verifyLink],
  ], s.receipts, "no receipts yet");
  table("batches", [
    ["seq", (b) => b.seq], ["receipts", (b) => b.count], ["status", (b) => badge(b.status, "status")],
    ["block", (b) => b.committed_block], ["root", (b) => el("span", short(b.root), "mono")],
    ["cid", (b) => el("span", short(b.cid), "mono")],
  ], s.batches, "no batches yet");
  const box = document.getElementById("datasets");
  box.replaceChildren();
  if (s.datasets.length === 0) box.appendChild(el("p", "no datasets on chain yet", "muted"));
  for (const d of s.datasets) {
    const h = el("h3");
    h.appendChild(el("span", `#${d.id} `));
    h.appendChild(el("span", d.name, "dataset-name"));
    h.appendChild(el("span", ` · ${d.license} · curator ${short(d.curator)}`, "muted"));
    box.appendChild(h);
    const t = el("table");
    t.id = "dataset-" + Number(d.id);
    box.appendChild(t);
    table(t.id, [
      ["contribution", (c) => c.id], ["contributor", (c) => el("span", short(c.contributor), "mono")],
      ["status", (c) => badge(c.status, "status")], ["weight", (c) => c.weight],
      ["answers attributed", (c) => c.answers_attributed], ["pending reward", (c) => c.pending_reward],
    ], d.contributions, "no contributions");
  }
}

async function poll() {
  try {
    const r = await fetch("/dashboard/api/state", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (err) {
    document.getElementById("updated").textContent = "update failed: " + err.message;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", poll);
