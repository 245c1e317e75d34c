// rlaudit report: draws the plotly figures (lazily, when they scroll into view) and applies the filters.
(function () {
  "use strict";
  var figures = JSON.parse(document.getElementById("rlaudit-figures").textContent);
  var template = JSON.parse(document.getElementById("rlaudit-template").textContent);
  var byId = {};
  figures.forEach(function (f) { byId[f.id] = f; });
  var config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["sendDataToCloud"] };

  function render(el) {
    if (el.getAttribute("data-rendered")) return;
    var fig = byId[el.getAttribute("data-fig")];
    if (!fig) return;
    el.setAttribute("data-rendered", "1");
    var layout = Object.assign({ template: template }, fig.layout);
    window.Plotly.newPlot(el, fig.data, layout, config);
  }

  var plots = Array.prototype.slice.call(document.querySelectorAll("[data-fig]"));
  if ("IntersectionObserver" in window) {
    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (entry.isIntersecting) { observer.unobserve(entry.target); render(entry.target); }
      });
    }, { rootMargin: "600px 0px" });
    plots.forEach(function (el) { observer.observe(el); });
  } else {
    plots.forEach(render);
  }
  // Draw every figure now (for printing, and for tests).
  window.rlauditRenderAll = function () { plots.forEach(render); return plots.length; };

  var runSel = document.getElementById("filter-run");
  if (!runSel) return;  // a page without findings filters (the resampling page)
  var kindSel = document.getElementById("filter-kind");
  var sevSel = document.getElementById("filter-severity");
  var count = document.getElementById("filter-count");

  function applyFilters() {
    var run = runSel.value, kind = kindSel.value, sev = parseInt(sevSel.value, 10) || 0;
    var shown = 0, total = 0;
    document.querySelectorAll(".item").forEach(function (el) {
      var ok = (!run || el.getAttribute("data-run") === run) &&
               (!kind || el.getAttribute("data-kind") === kind) &&
               parseInt(el.getAttribute("data-severity"), 10) >= sev;
      el.classList.toggle("hidden", !ok);
      if (el.tagName === "TR") { total += 1; if (ok) shown += 1; }
    });
    document.querySelectorAll("#runs [data-run]").forEach(function (el) {
      el.classList.toggle("hidden", !!run && el.getAttribute("data-run") !== run);
    });
    count.textContent = total ? "showing " + shown + " of " + total + " findings" : "";
  }
  [runSel, kindSel, sevSel].forEach(function (s) { s.addEventListener("change", applyFilters); });
  applyFilters();
})();
