// fitserve web pages: live job progress (polling the JSON API) and sortable tables. No build step.
(function () {
  "use strict";

  function pollJob(box) {
    var id = box.dataset.job;
    var state = box.querySelector("[data-testid=job-state]");
    var prog = box.querySelector("[data-testid=job-progress]");
    var bar = box.querySelector("[data-testid=job-bar]");
    var elapsed = box.querySelector("[data-testid=job-elapsed]");
    var counts = box.querySelector("[data-testid=job-counts]");
    function tick() {
      fetch("/v1/jobs/" + encodeURIComponent(id), { headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (st) {
          state.textContent = st.state;
          state.className = "badge state-" + st.state;
          prog.textContent = st.progress.done + " / " + st.progress.total;
          bar.max = st.progress.total || 1;
          bar.value = st.progress.done;
          if (elapsed) elapsed.textContent = Math.round(st.timings.total_s);
          var c = st.counts;
          counts.textContent = "(" + c.cached + " from the cache, " + c.computed + " computed" +
            (c.not_converged ? ", " + c.not_converged + " not converged" : "") + (c.errors ? ", " + c.errors + " failed" : "") + ")";
          if (["done", "failed", "cancelled"].indexOf(st.state) >= 0) {
            window.location.reload();  // the server renders plot, table and downloads
          } else {
            setTimeout(tick, 1000);
          }
        })
        .catch(function () { setTimeout(tick, 3000); });
    }
    setTimeout(tick, 500);
  }

  function sortable(table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.tabIndex = 0;
      function sort() {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var numeric = th.dataset.type === "num";
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        function key(row) {
          var cell = row.cells[col];
          var raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
          if (!numeric) return raw;
          var x = parseFloat(raw);
          return isNaN(x) ? null : x;
        }
        rows.sort(function (a, b) {
          var x = key(a), y = key(b);
          if (x === y) return 0;
          if (x === null) return 1;   // empty cells last either way
          if (y === null) return -1;
          var c = numeric ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); } });
    });
  }

  // The quick-limit form: say what happens while the page waits, and that a first size compiles (~10 s)
  function quickForm(form) {
    var note = document.getElementById("computing");
    if (!note) return;
    var compiled = (form.dataset.compiled || "").split(",").filter(Boolean);
    form.addEventListener("submit", function () {
      var bins = (form.elements.observed.value || "").split(/[\s,;]+/).filter(Boolean).length;
      if (bins && compiled.indexOf(String(bins)) < 0) {
        note.textContent = "Compiling the fit for " + bins + " bin" + (bins === 1 ? "" : "s") +
          " (the first limit of this size takes about 10 s; later ones are instant)\u2026";
      } else {
        note.textContent = "Computing\u2026";
      }
      note.hidden = false;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var quick = document.getElementById("quick-form");
    if (quick) quickForm(quick);
    var box = document.getElementById("progress");
    if (box && box.dataset.terminal === "false") pollJob(box);
    document.querySelectorAll("table.sortable").forEach(sortable);
  });
})();
