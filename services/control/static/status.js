/* The status page: the job list and crawler pool from /api/status, the selected job's charts
   from /jobs/{id}/series, refreshed every two seconds while anything runs. */
(function () {
  "use strict";
  var root = document.getElementById("status-root");
  var selected = root.dataset.selected || "";
  var lastSeriesJob = null, lastSeriesState = null;
  var TERMINAL = {succeeded: 1, failed: 1, cancelled: 1};

  function $(id) { return document.getElementById(id); }
  function text(node, value) { node.textContent = value; return node; }
  function td(tr, value) { return text(tr.appendChild(document.createElement("td")), value); }
  function fmt(v) { return v === undefined || v === null ? "-" : Charts.format(+v); }
  function duration(s) {
    if (s === undefined || s === null || !isFinite(s)) { return "-"; }
    s = Math.round(s);
    var h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
  }
  function fetchJson(url) {
    return fetch(url, {credentials: "same-origin"}).then(function (r) {
      return r.ok ? r.json() : Promise.reject(new Error(url + ": " + r.status));
    });
  }

  function progressText(job) {
    var p = job.progress || {};
    if (p.step !== undefined && p.total_steps) { return p.step + " / " + p.total_steps; }
    if (p.phase) { return p.phase; }
    return "";
  }

  function renderJobs(data) {
    var body = $("jobs-table").querySelector("tbody");
    body.innerHTML = "";
    var counts = [];
    for (var k in data.shown_counts) { if (data.shown_counts[k]) { counts.push(data.shown_counts[k] + " " + k); } }
    text($("job-counts"), data.total_jobs + " total" + (counts.length ? " \u00b7 " + counts.join(", ") : ""));
    if (!selected && data.jobs.length) {
      var running = data.jobs.find(function (j) { return j.state === "running"; });
      selected = (running || data.jobs[0]).id;
    }
    data.jobs.forEach(function (job) {
      var tr = body.appendChild(document.createElement("tr"));
      tr.dataset.job = job.id;
      if (job.id === selected) { tr.className = "selected"; }
      td(tr, job.id);
      td(tr, job.kind + (job.spec.mode ? " (" + job.spec.mode + ")" : ""));
      var badge = document.createElement("span");
      badge.className = "badge state-" + job.state;
      badge.textContent = job.state;
      tr.appendChild(document.createElement("td")).appendChild(badge);
      td(tr, progressText(job));
      tr.addEventListener("click", function () { selected = job.id; lastSeriesJob = null; refresh(); });
    });
    var job = data.jobs.find(function (j) { return j.id === selected; });
    if (job) { renderFacts(job, data.now); }
    renderCrawler(data.crawler);
    return job;
  }

  function renderFacts(job, now) {
    var p = job.progress || {};
    text($("job-title"), job.id + " \u00b7 " + job.kind + " \u00b7 " + job.state);
    var facts = [["Phase", p.phase || "-"],
                 ["Step", p.step !== undefined ? p.step + (p.total_steps ? " / " + p.total_steps : "") : "-"],
                 ["Epoch", fmt(p.epoch)], ["ETA", job.state === "running" ? duration(p.eta_s) : "-"],
                 ["Loss", fmt(p.loss)], ["Samples/s", fmt(p.samples_per_s)],
                 ["Online", job.spec.online || "off"], ["Attempts", job.attempts || 0]];
    if (job.started_at) {
      facts.push(["Elapsed", duration((job.finished_at || now) - job.started_at)]);
    }
    var v = p.validation;
    if (v) { facts.push(["Val R@1/5/10 MR", [v.r1, v.r5, v.r10, v.mr].map(fmt).join(" / ")]); }
    var r = job.result && job.result.metrics;
    if (r) { facts.push(["Result", Object.keys(r).filter(function (k) { return typeof r[k] === "number"; })
                                     .map(function (k) { return k + " " + fmt(r[k]); }).join(", ")]); }
    var box = $("job-facts");
    box.innerHTML = "";
    facts.forEach(function (f) {
      var s = box.appendChild(document.createElement("span"));
      s.appendChild(document.createElement("b")).textContent = f[0] + ": ";
      s.appendChild(document.createTextNode(f[1]));
      if (f[0] === "Step" && p.total_steps) {
        var bar = s.appendChild(document.createElement("span"));
        bar.className = "progress";
        bar.appendChild(document.createElement("i")).style.width = Math.min(100, 100 * p.step / p.total_steps) + "%";
      }
    });
    text($("job-reason"), job.reason || "");
  }

  function points(list, key, x) {
    return list.filter(function (p) { return typeof p[key] === "number"; })
               .map(function (p, i) { return [x ? p[x] : i + 1, p[key]]; });
  }

  /* Progress as the trainer reports it: a fraction, "i/n", or a word for the stage. */
  function progressFraction(p) {
    if (typeof p === "number") { return Math.max(0, Math.min(1, p)); }
    if (typeof p !== "string") { return 0; }
    var m = /^(\d+)\s*\/\s*(\d+)$/.exec(p);
    if (m) { return +m[2] ? +m[1] / +m[2] : 0; }
    if (p === "done" || p === "scored" || p === "reused") { return 1; }
    if (p === "encoding") { return 0.5; }
    return 0;
  }

  function renderSeries(s) {
    var train = s.train || [];
    var stepX = train.length && train[0].step !== undefined && train[0].step !== null ? "step" : null;
    Charts.line($("chart-loss"), [{name: "loss", points: points(train, "loss", stepX)}], {xLabel: "step"});
    Charts.line($("chart-lr"), [{name: "lr", points: points(train, "lr", stepX)}], {xLabel: "step"});
    Charts.line($("chart-throughput"), [{name: "samples/s", points: points(train, "samples_per_s", stepX)}],
                {xLabel: "step", yMin: 0});
    var val = s.validation || [];
    var vx = val.length && val[0].step !== undefined && val[0].step !== null ? "step" : null;
    Charts.line($("chart-recall"), ["r1", "r5", "r10", "mr"].map(function (k) {
      return {name: k === "mr" ? "MR" : "R@" + k.slice(1), points: points(val, k, vx)};
    }), {xLabel: "step", yMin: 0, emptyText: "no validation yet"});
    var online = s.online || [];
    Charts.line($("chart-online"), ["queries", "pairs", "missing", "dropped_leaked"].map(function (k) {
      return {name: k.replace("_", " "), points: points(online, k, "index")};
    }), {xLabel: "online batch", yMin: 0, emptyText: "no online learning"});
    Charts.line($("chart-online-wait"), [{name: "wait ms", points: points(online, "wait_ms", "index")}],
                {xLabel: "online batch", yMin: 0, emptyText: "no online learning"});
    var members = s.ensemble || {};
    var names = Object.keys(members);
    $("ensemble-box").style.display = names.length ? "" : "none";
    var items = [];
    names.filter(function (n) { return n !== "fused"; }).forEach(function (name) {
      var m = members[name];
      var prog = progressFraction(m.progress);
      var source = m.checkpoint || m.scores || "";
      var label = source ? source.split("/").pop() : "member " + name;
      label = label.length > 18 ? "\u2026" + label.slice(-17) : label;
      items.push({label: label + " w", value: +m.weight || 0, max: 1, note: fmt(m.weight)});
      items.push({label: label + " done", value: prog, max: 1, color: "#9aa0ad",
                  note: typeof m.progress === "string" ? m.progress : Math.round(prog * 100) + "%"});
    });
    Charts.bars($("chart-ensemble"), items, {max: 1, labelWidth: 150, emptyText: "no members"});
    var fused = members.fused && members.fused.metrics || (s.result && s.result.metrics);
    var box = $("ensemble-metrics");
    box.innerHTML = "";
    if (fused) {
      Object.keys(fused).forEach(function (k) {
        var span = box.appendChild(document.createElement("span"));
        span.appendChild(document.createElement("b")).textContent = "fused " + k + ": ";
        span.appendChild(document.createTextNode(fmt(fused[k])));
      });
    }
  }

  function renderCrawler(pool) {
    text($("crawler-summary"), pool.ranks.length + " ranks \u00b7 " + pool.logged_in +
         " logged in \u00b7 queue " + pool.queue_depth);
    var body = $("crawler-table").querySelector("tbody");
    body.innerHTML = "";
    var colors = {logged_in: "#1e9e50", waiting_for_scan: "#e0a100", expired: "#d9534f", error: "#b00020"};
    var items = pool.ranks.map(function (r) {
      var tr = body.appendChild(document.createElement("tr"));
      td(tr, r.rank); td(tr, r.state); td(tr, fmt(r.pages_per_min)); td(tr, fmt(r.pages)); td(tr, fmt(r.failures));
      return {label: "rank " + r.rank + " (" + r.state + ")", value: +r.pages_per_min || 0,
              color: colors[r.state] || "#5b8def"};
    });
    items.push({label: "queue depth", value: pool.queue_depth, color: "#9b4dca"});
    Charts.bars($("chart-crawler"), items, {labelWidth: 190});
  }

  function refresh() {
    return fetchJson("/api/status").then(function (data) {
      var job = renderJobs(data);
      if (!job) { return data; }
      var needSeries = lastSeriesJob !== job.id || !TERMINAL[lastSeriesState] || lastSeriesState !== job.state;
      if (!needSeries) { return data; }
      return fetchJson("/jobs/" + encodeURIComponent(job.id) + "/series").then(function (s) {
        lastSeriesJob = job.id; lastSeriesState = job.state;
        renderSeries(s);
        root.dataset.rendered = job.id;
        return data;
      });
    }).catch(function (e) { text($("job-reason"), String(e)); });
  }

  refresh();
  setInterval(refresh, 2000);
})();
