// The try page's live log: while the try runs, its lines arrive as Server-Sent Events from
// the API (the session cookie authenticates the request) and are appended as text nodes,
// never as HTML. When the try ends the page reloads to show its exit code and reason.
"use strict";
// A `progress` message (`{"type":"progress","done":N,"total":M}` on stdout) updates the
// progress bar above the log.
function showProgress(line) {
  if (line.stream !== "stdout" || !line.text.includes('"progress"')) return;
  let message;
  try { message = JSON.parse(line.text); } catch (_) { return; }
  if (!message || message.type !== "progress" || typeof message.done !== "number") return;
  const box = document.getElementById("progress");
  const bar = document.getElementById("progress-bar");
  const text = document.getElementById("progress-text");
  if (!box || !bar || !text) return;
  box.hidden = false;
  bar.value = message.done;
  if (typeof message.total === "number" && message.total > 0) {
    bar.max = message.total;
    const percent = Math.round(Math.min(100, Math.max(0, message.done / message.total * 100)));
    text.textContent = `${message.done} of ${message.total} (${percent}%)`;
  } else {
    bar.removeAttribute("max");
    text.textContent = String(message.done);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const log = document.getElementById("log");
  if (!log || !log.dataset.follow) return;
  let url = log.dataset.follow;
  if (log.dataset.after) url += "?after=" + encodeURIComponent(log.dataset.after);
  const source = new EventSource(url);
  const stick = () => log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  source.addEventListener("line", (event) => {
    const line = JSON.parse(event.data);
    if (log.querySelector(`[data-seq="${line.seq}"]`)) return;
    const atBottom = stick();
    const row = document.createElement("div");
    row.className = "line " + line.stream;
    row.dataset.seq = String(line.seq);
    for (const [cls, text] of [["ts", line.timestamp.substring(11, 23)], ["stream", line.stream], ["text", line.text]]) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      row.appendChild(span);
    }
    log.appendChild(row);
    if (atBottom) log.scrollTop = log.scrollHeight;
    showProgress(line);
  });
  source.addEventListener("end", () => {
    source.close();
    const live = document.getElementById("live");
    if (live) live.textContent = "ended";
    setTimeout(() => window.location.reload(), 500);
  });
});
