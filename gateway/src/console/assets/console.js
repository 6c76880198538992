// Sluice console: the one script (served from /static, no inline script).
// - #pending[data-live]: the pending approvals' table body, replaced by
//   each `approvals` server-sent event (rendered by the server for the
//   signed-in person, buttons only where they may act).
// - #terminal[data-cast]: plays a session's asciicast v2 stream, writing
//   each output event into the <pre> at its recorded time.
"use strict";

function liveApprovals(body) {
  const source = new EventSource(body.dataset.live);
  source.addEventListener("approvals", (e) => {
    body.innerHTML = e.data;
  });
}

// Terminal output as plain text: drops ANSI escape sequences (CSI, OSC)
// and carriage returns before line feeds.
function plain(text) {
  return text
    .replace(/\u001b\][^\u0007\u001b]*(\u0007|\u001b\\)/g, "")
    .replace(/\u001b\[[0-9;?]*[ -\/]*[@-~]/g, "")
    .replace(/\u001b[()][A-Za-z0-9]/g, "")
    .replace(/\r\n/g, "\n");
}

async function playCast(pre, button) {
  button.disabled = true;
  pre.textContent = "";
  const response = await fetch(pre.dataset.cast, { credentials: "same-origin" });
  const lines = (await response.text()).split("\n").filter((l) => l.trim() !== "");
  const events = lines.slice(1).map((l) => JSON.parse(l)).filter((e) => e[1] === "o");
  const start = performance.now();
  for (const [time, , data] of events) {
    const wait = time * 1000 - (performance.now() - start);
    if (wait > 0) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(wait, 2000)));
    }
    pre.textContent += plain(data);
    pre.scrollTop = pre.scrollHeight;
  }
  pre.dataset.played = "true";
  button.disabled = false;
}

document.addEventListener("DOMContentLoaded", () => {
  const pending = document.getElementById("pending");
  if (pending && pending.dataset.live) {
    liveApprovals(pending);
  }
  const terminal = document.getElementById("terminal");
  const play = document.getElementById("play");
  if (terminal && play) {
    play.addEventListener("click", () => playCast(terminal, play));
  }
});
