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

// The options fields show the example of what is selected (the examples come from the server's registries).
function examplePlaceholders(form) {
  const options = form.querySelector("#options");
  const exportOptions = form.querySelector("#export_options");
  const apply = () => {
    const checked = form.querySelector("input[name=kind]:checked");
    if (checked && checked.value === "sweep") {
      const parts = [];
      form.querySelectorAll("input[name=methods]:checked").forEach((box) => {
        const option = form.querySelector(`#method option[value="${box.value}"]`);
        if (option) parts.push(`${JSON.stringify(box.value)}: ${option.dataset.example || "{}"}`);
      });
      options.placeholder = parts.length ? `{${parts.join(", ")}}` : options.dataset.sweepExample;
    } else {
      const method = form.querySelector("#method");
      options.placeholder = method.selectedOptions[0].dataset.example || "";
    }
    const format = form.querySelector("#export").selectedOptions[0];
    exportOptions.placeholder = format.dataset.example || "this format has no options";
  };
  form.querySelectorAll("input[name=kind], input[name=methods], #method, #export").forEach(
    (input) => input.addEventListener("change", apply));
  apply();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-poll]").forEach(poll);
  const form = document.getElementById("submit-form");
  if (form) {
    kindToggle(form);
    examplePlaceholders(form);
  }
});
