/* The panels of one job, by kind: training curves; online learning per batch and per pass;
   prediction phases with their durations; metrics; ensemble members next to the fused row.
   Input: the job's series from /jobs/{id}/series (see services/control/series.py). */
(function () {
  "use strict";
  var F = window.Fmt, P = window.Plots;
  var METRICS = [["r1", "R@1"], ["r5", "R@5"], ["r10", "R@10"], ["mr", "MR"]];
  // Which panels each kind of job shows (services/control/job_view.py names the kinds).
  var PANELS = {
    train: ["panel-training", "panel-online"],
    single: ["panel-phases", "panel-metrics"],
    ensemble: ["panel-phases", "panel-ensemble"],
    online: ["panel-phases", "panel-online", "panel-metrics"]
  };

  function $(id) { return document.getElementById(id); }

  /* A table body from rows of cells; a cell is text or {text, cls, title}. */
  function fillTable(table, rows) {
    var body = table.querySelector("tbody");
    body.textContent = "";
    rows.forEach(function (row) {
      var tr = body.appendChild(document.createElement("tr"));
      if (row.cls) { tr.className = row.cls; }
      (row.cells || row).forEach(function (cell) {
        var td = tr.appendChild(document.createElement("td"));
        if (cell !== null && typeof cell === "object") {
          td.textContent = cell.text;
          if (cell.cls) { td.className = cell.cls; }
          if (cell.title) { td.title = cell.title; }
        } else {
          td.textContent = cell === undefined || cell === null ? "-" : String(cell);
        }
      });
    });
    table.hidden = !rows.length;
  }

  function metricCells(m) {
    return METRICS.map(function (k) { return {text: m ? F.num(m[k[0]]) : "-", cls: "num"}; });
  }

  /* A training run without online learning shows no empty online charts. */
  function showPanels(kind, s, job) {
    var wanted = PANELS[kind] || [];
    var online = (job.spec.online || "off") !== "off" || (s.online || []).length || (s.online_passes || []).length;
    if (!online) { wanted = wanted.filter(function (id) { return id !== "panel-online"; }); }
    Array.prototype.forEach.call(document.querySelectorAll(".job-panel"), function (panel) {
      panel.hidden = wanted.indexOf(panel.id) < 0;
    });
  }

  function stepAxis(points) {
    var byStep = points.length && F.isNum(points[0].step);
    return {xs: points.map(function (p, i) { return byStep && F.isNum(p.step) ? p.step : i + 1; }),
            label: byStep ? "step" : "point"};
  }

  function renderTraining(s) {
    var train = s.train || [], x = stepAxis(train);
    P.line($("chart-loss"), x.xs, [{label: "loss", values: P.column(train, "loss")}], {xLabel: x.label});
    P.line($("chart-lr"), x.xs, [{label: "lr", values: P.column(train, "lr")}], {xLabel: x.label});
    P.line($("chart-throughput"), x.xs, [{label: "samples/s", values: P.column(train, "samples_per_s")}],
           {xLabel: x.label, yMin: 0});
    var val = s.validation || [], v = stepAxis(val);
    P.line($("chart-recall"), v.xs, METRICS.map(function (k) { return {label: k[1], values: P.column(val, k[0])}; }),
           {xLabel: v.label, yMin: 0, emptyText: "no validation yet"});
  }

  function renderOnline(s) {
    var online = s.online || [];
    var xs = online.map(function (p) { return p.index; });
    var opts = {xLabel: "online batch", yMin: 0, emptyText: "no online learning yet"};
    P.line($("chart-online-pairs"), xs, [{label: "queries", values: P.column(online, "queries")},
                                         {label: "pairs used", values: P.column(online, "pairs")},
                                         {label: "missing", values: P.column(online, "missing")}], opts);
    P.line($("chart-online-wait"), xs, [{label: "wait ms", values: P.column(online, "wait_ms")}], opts);
    P.line($("chart-online-loss"), xs, [{label: "online loss", values: P.column(online, "loss")}],
           {xLabel: "online batch", emptyText: "no online learning yet"});
    var reasons = s.online_missing || {};
    var names = Object.keys(reasons).sort(function (a, b) { return reasons[b] - reasons[a]; });
    $("online-missing").textContent = names.length ? "Missing images by reason: " + names.map(function (n) {
      return n + " " + F.num(reasons[n]);
    }).join(", ") : "";
    fillTable($("online-passes"), (s.online_passes || []).map(function (p) {
      var why = Object.keys(p.missing_by_reason || {}).map(function (n) { return n + " " + F.num(p.missing_by_reason[n]); });
      return [p.split || "-", F.num(p.epoch), F.num(p.pass_index), {text: F.num(p.queries), cls: "num"},
              {text: F.num(p.pairs), cls: "num"}, {text: F.num(p.missing), cls: "num", title: why.join(", ")},
              {text: F.num(p.steps), cls: "num"}, {text: F.num(p.dropped_disagreeing), cls: "num",
               title: "crawled pictures left out as disagreeing with the query's other pictures"},
              {text: F.num(p.replay_pairs), cls: "num", title: "offline pairs mixed into the online steps"},
              {text: F.num(p.skipped_active), cls: "num",
               title: "queries not crawled: active crawling asks only for those with the rarest words"},
              {text: F.duration(p.wall_s), cls: "num"}];
    }));
  }

  function renderPhases(s, job, now) {
    var phases = s.phases || [];
    var end = s.ended_at || job.finished_at;
    fillTable($("phases-table"), phases.map(function (p, i) {
      var last = i === phases.length - 1;
      var running = p.duration_s === null && last && !end;
      var took = F.isNum(p.duration_s) ? p.duration_s : (end ? end - p.ts : now - p.ts);
      return {cls: running ? "running" : "", cells: [p.name, F.clock(p.ts),
              {text: F.duration(took) + (running ? " so far" : ""), cls: "num"}]};
    }));
  }

  /* Before/after: validation figures (epoch 0 = before any online pass), each pass that
     reports its metrics, and the final result. */
  function renderMetrics(s, job) {
    var rows = [];
    (s.validation || []).forEach(function (v) {
      rows.push([v.epoch === 0 ? "before online learning" : "after epoch " + F.num(v.epoch)].concat(metricCells(v)));
    });
    (s.online_passes || []).forEach(function (p) {
      if (p.metrics) { rows.push(["after online pass " + F.num(p.pass_index)].concat(metricCells(p.metrics))); }
    });
    var result = (s.result && s.result.metrics) || (job.result && job.result.metrics);
    if (result) {
      rows.push({cls: "final", cells: [rows.length ? "final (after online learning)" : "result"].concat(metricCells(result))});
    }
    fillTable($("metrics-table"), rows);
    $("metrics-empty").hidden = rows.length > 0;
  }

  function weightText(w) { return F.isNum(w) ? F.num(Math.round(w * 1000) / 1000) : "-"; }

  function renderEnsemble(s) {
    var e = s.ensemble || {members: []};
    var rows = (e.members || []).map(function (m) {
      var file = (m.checkpoint || m.scores || "").split("/").pop();
      return {cls: "member", cells: [F.num(m.member), {text: m.run || file || "-", cls: "run", title: m.checkpoint || m.scores || ""},
              {text: file || "-", cls: "file"}, {text: weightText(m.weight), cls: "num"}, m.status || "-"]
              .concat(metricCells(m.metrics))};
    });
    if (e.fused) {
      var total = (e.fused.weights || []).length;
      rows.push({cls: "fused", cells: ["", {text: "fused ensemble", cls: "run"}, total + " members",
                 {text: (e.fused.weights || []).map(weightText).join(" / "), cls: "num"}, "done"]
                 .concat(metricCells(e.fused.metrics))});
    }
    fillTable($("ensemble-table"), rows);
    var vs = e.versus_best, verdict = $("ensemble-verdict");
    verdict.className = "verdict";
    if (vs) {
      var better = vs.gain_mr > 0;
      verdict.className += better ? " better" : " worse";
      verdict.textContent = "Ensemble MR " + F.num(vs.fused_mr) + " vs best member (" + vs.best_run + ") " +
        F.num(vs.best_mr) + ": " + (vs.gain_mr >= 0 ? "+" : "") + F.num(vs.gain_mr) +
        (better ? " \u2014 the ensemble beats its best member" : " \u2014 the ensemble does not beat its best member");
    } else {
      verdict.textContent = e.members && e.members.length ? "Member and fused metrics appear once the texts are scored." : "";
    }
    var fit = e.fit, fitRows = [];
    if (fit) {
      fitRows.push({cls: "fitted", cells: ["fitted", (fit.weights || []).map(weightText).join(" / ")].concat(metricCells(fit.metrics))});
      fitRows.push({cls: "equal", cells: ["equal", (fit.equal_weights || []).map(weightText).join(" / ")].concat(metricCells(fit.equal_metrics))});
      var a = fit.metrics && fit.metrics.mr, b = fit.equal_metrics && fit.equal_metrics.mr;
      $("fit-verdict").textContent = F.isNum(a) && F.isNum(b) ? "On the validation set, fitted weights give MR " +
        (a - b >= 0 ? "+" : "") + F.num(Math.round((a - b) * 100) / 100) + " over equal weights" +
        (e.fit_evaluations ? " (" + e.fit_evaluations + " evaluations to fit)" : "") + "." : "";
    } else {
      $("fit-verdict").textContent = "Weights were given, not fitted.";
    }
    fillTable($("fit-table"), fitRows);
  }

  function render(kind, s, job, now) {
    showPanels(kind, s, job);  // first: a chart takes its width from its visible container
    if (kind === "train") { renderTraining(s); }
    if (kind === "train" || kind === "online") { renderOnline(s); }
    if (kind !== "train") { renderPhases(s, job, now); }
    if (kind === "single" || kind === "online") { renderMetrics(s, job); }
    if (kind === "ensemble") { renderEnsemble(s); }
  }

  window.JobPanels = {render: render, fillTable: fillTable};
})();
