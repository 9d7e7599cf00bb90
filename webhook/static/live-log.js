// Live log: poll for lines after the last one shown until the deployment ends, then reload once
// so the steps and statuses show their final values. Pages work without it (meta refresh).
(function () {
  "use strict";
  const log = document.getElementById("log");
  if (!log) return;
  const terminal = ["succeeded", "failed", "canceled"];
  if (terminal.includes(log.dataset.state)) return;
  let after = log.dataset.after || "-";
  const pad = (n) => String(n).padStart(2, "0");
  const clock = (at) => { const d = new Date(at * 1000); return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`; };

  async function poll() {
    try {
      const url = new URL(log.dataset.source, window.location.href);
      url.searchParams.set("after", after);
      const answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (answer.ok) {
        const body = await answer.json();
        const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
        for (const line of body.lines) {
          const span = document.createElement("span");
          span.className = line.kind;
          span.textContent = `${clock(line.at)} ${line.text}`;
          log.appendChild(span);
          log.appendChild(document.createTextNode("\n"));
          after = line.id;
        }
        if (atBottom && body.lines.length) window.scrollTo(0, document.body.scrollHeight);
        for (const host of body.hosts || []) {
          const row = document.querySelector(`#hosts tr[data-host="${CSS.escape(host.host)}"]`);
          if (!row) continue;
          const badge = row.cells[1].firstElementChild;
          badge.textContent = host.state;
          badge.className = `state ${host.state.replace(" ", "-")}`;
          row.cells[2].textContent = host.detail;
        }
        const state = document.getElementById("state");
        if (state && state.textContent !== body.state) { state.textContent = body.state; state.className = `state ${body.state}`; }
        if (terminal.includes(body.state)) { window.location.reload(); return; }
      }
    } catch (error) { /* a blip: try again */ }
    window.setTimeout(poll, 1000);
  }
  window.setTimeout(poll, 1000);
})();
