/* Runs compared on /status: tick two or more training jobs in the jobs list and their
   validation recall and training loss are drawn on one chart each, one line per run, over
   the union of their steps. Picks live in the page (and in ?compare=ID,ID for a link); each
   run's series come from /jobs/{id}/series, fetched again only while the run is not over. */
(function () {
  "use strict";
  var F = window.Fmt, P = window.Plots;
  var METRICS = {r1: "R@1", r5: "R@5", r10: "R@10", mr: "MR"};
  var TERMINAL = {succeeded: 1, failed: 1, cancelled: 1};
  var initial = new URLSearchParams(location.search).get("compare");
  var chosen = initial ? initial.split(",").filter(Boolean) : [];
  var runs = {};  // id -> {name, state, series}

  function $(id) { return document.getElementById(id); }

  function toggle(id, on) {
    var at = chosen.indexOf(id);
    if (on && at < 0) { chosen.push(id); }
    if (!on && at >= 0) { chosen.splice(at, 1); }
    render();
  }

  /* The jobs of the latest /api/status: names and states of the runs picked, their series. */
  function update(jobs) {
    jobs.forEach(function (job) {
      if (chosen.indexOf(job.id) < 0) { return; }
      var run = runs[job.id] || (runs[job.id] = {series: null, state: null});
      run.name = job.view.run || job.id;
      var stale = !run.series || !TERMINAL[run.state] || run.state !== job.state;
      run.state = job.state;
      if (stale && !run.loading) {
        run.loading = true;
        fetch("/jobs/" + encodeURIComponent(job.id) + "/series", {credentials: "same-origin"})
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (s) { if (s) { run.series = s; } })
          .catch(function () {})
          .then(function () { run.loading = false; render(); });
      }
    });
    render();
  }

  /* One line per run over the union of the runs' steps (null where a run has no point). */
  function overlay(el, picked, listOf, key, opts) {
    var steps = {};
    picked.forEach(function (id) {
      listOf(runs[id].series).forEach(function (p) { if (F.isNum(p.step)) { steps[p.step] = 1; } });
    });
    var xs = Object.keys(steps).map(Number).sort(function (a, b) { return a - b; });
    var series = picked.map(function (id) {
      var byStep = {};
      listOf(runs[id].series).forEach(function (p) { if (F.isNum(p.step) && F.isNum(p[key])) { byStep[p.step] = p[key]; } });
      return {label: runs[id].name, values: xs.map(function (x) { return x in byStep ? byStep[x] : null; })};
    });
    P.line(el, xs, series, opts);
  }

  function render() {
    var panel = $("compare-panel");
    if (!panel) { return; }
    panel.hidden = chosen.length === 0;
    var picked = chosen.filter(function (id) { return runs[id] && runs[id].series; });
    $("compare-hint").hidden = chosen.length >= 2;
    $("compare-charts").hidden = chosen.length < 2;
    $("compare-runs").textContent = chosen.map(function (id) { return (runs[id] && runs[id].name) || id; }).join(" \u00b7 ");
    if (chosen.length < 2) { return; }
    var metric = $("compare-metric").value;
    overlay($("chart-compare-recall"), picked, function (s) { return s.validation || []; }, metric,
            {xLabel: "step", yMin: 0, emptyText: "no validation yet"});
    overlay($("chart-compare-loss"), picked, function (s) { return s.train || []; }, "loss",
            {xLabel: "step", emptyText: "no training steps yet"});
    $("compare-recall-caption").textContent = "Validation " + METRICS[metric] + " (%)";
    panel.dataset.runs = picked.join(",");
  }

  // The page's scripts load after its body: the controls are there already.
  var metricSelect = $("compare-metric");
  if (metricSelect) { metricSelect.addEventListener("change", render); }
  var clear = $("compare-clear");
  if (clear) {
    clear.addEventListener("click", function () {
      chosen = [];
      Array.prototype.forEach.call(document.querySelectorAll("input.compare-pick"), function (c) { c.checked = false; });
      render();
    });
  }

  window.Compare = {
    toggle: toggle, update: update,
    isChosen: function (id) { return chosen.indexOf(id) >= 0; }
  };
})();
