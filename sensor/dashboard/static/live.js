// Live: new alerts from /api/live (server-sent events), added at the top without a reload.
"use strict";
(function () {
  const status = document.getElementById("live-status");
  const body = document.querySelector("#live tbody");
  const levels = [[99, "critical"], [73, "high"], [47, "medium"], [21, "low"], [0, "informational"]];
  function level(s) { for (const [floor, name] of levels) if (s >= floor) return name; return ""; }
  function cell(tr, value, href) {
    const td = document.createElement("td");
    if (href) {
      const a = document.createElement("a");
      a.href = href;
      a.textContent = value;
      td.appendChild(a);
    } else {
      td.textContent = value;  // text, never markup: command lines come from anyone
    }
    tr.appendChild(td);
  }
  const source = new EventSource("/api/live");
  source.onopen = () => { status.textContent = "connected"; document.body.dataset.live = "1"; };
  source.onerror = () => { status.textContent = "reconnecting…"; };
  source.addEventListener("alert", ev => {
    const a = JSON.parse(ev.data);
    const tr = document.createElement("tr");
    tr.className = "alert new sev-" + level(a.severity);
    tr.dataset.id = a.id;
    cell(tr, String(a.ts).replace("T", " ").slice(0, 19), "/alerts/" + encodeURIComponent(a.id));
    cell(tr, a.host_name || a.host_id || "");
    cell(tr, a.rule_name || "");
    cell(tr, (a.process_name || "") + " " + (a.command_line || "").slice(0, 160));
    cell(tr, level(a.severity));
    cell(tr, a.handled);
    body.insertBefore(tr, body.firstChild);
  });
})();
