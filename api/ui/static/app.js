// Live updates by short polling: an element with data-poll="URL" has its content replaced by URL's HTML
// every data-interval ms. On a job page the poll stops, and the page reloads to show the report, once the
// job has finished. A 401 (session expired) reloads the page, which leads to the sign-in form.
"use strict";

function poll(el) {
  const url = el.dataset.poll;
  if (!url) return;
  const interval = parseInt(el.dataset.interval || "2000", 10);
  let stopped = false;
  async function tick() {
    if (stopped) return;
    if (!document.hidden) {
      try {
        const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
        if (response.status === 401) { window.location.reload(); return; }
        if (response.ok) {
          el.innerHTML = await response.text();
          const status = el.querySelector("[data-terminal]");
          if (el.dataset.reloadWhenTerminal && status && status.dataset.terminal === "true") {
            stopped = true;
            window.location.reload();
            return;
          }
        }
      } catch (err) {
        // the server is restarting or the network dropped: try again at the next tick
      }
    }
    window.setTimeout(tick, interval);
  }
  window.setTimeout(tick, interval);
}

function kindToggle(form) {
  const apply = () => {
    const checked = form.querySelector("input[name=kind]:checked");
    const kind = checked ? checked.value : "prune";
    form.classList.toggle("kind-prune", kind === "prune");
    form.classList.toggle("kind-sweep", kind === "sweep");
  };
  form.querySelectorAll("input[name=kind]").forEach((input) => input.addEventListener("change", apply));
  apply();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-poll]").forEach(poll);
  const form = document.getElementById("submit-form");
  if (form) kindToggle(form);
});
