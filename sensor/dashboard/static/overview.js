// Overview: fetches /api/overview with the page's filters and draws it with Chart.js.
"use strict";
(function () {
  const status = document.getElementById("overview-status");
  const query = status.dataset.query;
  const colors = { killed: "#d9534f", quarantined: "#8e44ad", blocked: "#f0ad4e", alerted: "#5aa0ff" };
  const labels = { killed: "killed", quarantined: "quarantined", blocked: "blocked", alerted: "only alerted" };

  function text(id, value) { document.getElementById(id).textContent = String(value); }
  function when(t) { return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 16); }

  function bars(id, rows, color) {
    new Chart(document.getElementById(id), {
      type: "bar",
      data: { labels: rows.map(r => r[0] === null ? "(none)" : String(r[0])),
              datasets: [{ data: rows.map(r => r[1]), backgroundColor: color }] },
      options: { indexAxis: "y", animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } } },
    });
  }

  fetch("/api/overview?" + query, { credentials: "same-origin" })
    .then(r => r.ok ? r.json() : r.json().then(e => Promise.reject(new Error(e.error || r.statusText))))
    .then(o => {
      text("n-alerts", o.alerts);
      for (const k of Object.keys(colors)) text("n-" + k, o.totals[k]);
      for (const k of ["open", "acknowledged", "resolved"]) text("n-" + k, o.by_state[k] || 0);
      new Chart(document.getElementById("chart-time"), {
        type: "bar",
        data: { labels: o.series.map(s => when(s.t)),
                datasets: Object.keys(colors).map(k => ({ label: labels[k], data: o.series.map(s => s[k]),
                                                          backgroundColor: colors[k] })) },
        options: { animation: false, maintainAspectRatio: false,
                   scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
      });
      bars("chart-rule", o.by_rule, "#5aa0ff");
      bars("chart-technique", o.by_technique, "#46506a");
      bars("chart-severity", o.by_severity, "#d9534f");
      bars("chart-host", o.by_host, "#2e8b57");
      const latest = {};
      for (const h of o.health) latest[h.host] = h;
      const body = document.querySelector("#health tbody");
      for (const h of Object.values(latest)) {
        const tr = document.createElement("tr");
        tr.className = "health-row";
        for (const v of [h.host, when(h.t), h.lost, h.queue_events === null ? h.queue_bytes + " B" : h.queue_events,
                         h.cpu_percent, Math.round((h.rss_bytes || 0) / 1048576) + " MiB"]) {
          const td = document.createElement("td");
          td.textContent = String(v);
          tr.appendChild(td);
        }
        body.appendChild(tr);
      }
      const hosts = [...new Set(o.health.map(h => h.host))];
      const times = [...new Set(o.health.map(h => h.t))].sort((a, b) => a - b);
      new Chart(document.getElementById("chart-health"), {
        type: "line",
        data: { labels: times.map(when), datasets: hosts.flatMap(host => [
          { label: "CPU % " + host.slice(0, 8), data: times.map(t => (o.health.find(h => h.host === host && h.t === t) || {}).cpu_percent ?? null) },
          { label: "lost " + host.slice(0, 8), data: times.map(t => (o.health.find(h => h.host === host && h.t === t) || {}).lost ?? null) },
        ]) },
        options: { animation: false, maintainAspectRatio: false, spanGaps: true },
      });
      status.textContent = "bars of " + (o.step / 60) + " min";
      document.body.dataset.loaded = "1";
    })
    .catch(e => { status.textContent = "could not load: " + e.message; status.className = "error"; });
})();
