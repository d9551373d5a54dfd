/* The status page: the jobs list and the crawler pool from /api/status, the selected job's
   panels from /jobs/{id}/series, refreshed every two seconds. A job's view has its own URL
   (/status?job=ID); the browser's back button walks through the jobs looked at. */
(function () {
  "use strict";
  var F = window.Fmt;
  var root = document.getElementById("status-root");
  var selected = root.dataset.selected || "";
  var lastSeries = {job: null, state: null};
  var TERMINAL = {succeeded: 1, failed: 1, cancelled: 1};
  var KIND_LABELS = {train: "training", single: "prediction", ensemble: "ensemble", online: "test-time online",
                     index: "gallery index"};
  var LOGIN_LABELS = {starting: "starting", waiting_for_scan: "waiting for scan", logged_in: "logged in",
                      expired: "code expired", error: "error", needs_human: "needs you"};

  function $(id) { return document.getElementById(id); }
  function fetchJson(url) {
    return fetch(url, {credentials: "same-origin"}).then(function (r) {
      return r.ok ? r.json() : Promise.reject(new Error(url + ": " + r.status));
    });
  }
  function td(tr, value, cls) {
    var cell = tr.appendChild(document.createElement("td"));
    cell.textContent = value === undefined || value === null ? "-" : String(value);
    if (cls) { cell.className = cls; }
    return cell;
  }
  function badge(parent, state, label) {
    var b = parent.appendChild(document.createElement("span"));
    b.className = "badge state-" + state;
    b.textContent = label || state;
    return b;
  }
  function elapsed(job, now) {
    return job.started_at ? (job.finished_at || now) - job.started_at : null;
  }

  function select(jobId, push) {
    if (jobId === selected) { return; }
    selected = jobId;
    lastSeries.job = null;
    if (push) { history.pushState({job: jobId}, "", "/status?job=" + encodeURIComponent(jobId)); }
    refresh();
  }

  function renderJobs(data) {
    var body = $("jobs-table").querySelector("tbody");
    body.textContent = "";
    var counts = Object.keys(data.shown_counts).filter(function (k) { return data.shown_counts[k]; })
      .map(function (k) { return data.shown_counts[k] + " " + k; });
    $("job-counts").textContent = data.total_jobs + " total" + (counts.length ? " \u00b7 " + counts.join(", ") : "");
    if (!selected && data.jobs.length) {
      var running = data.jobs.find(function (j) { return j.state === "running"; });
      selected = (running || data.jobs[0]).id;
      history.replaceState({job: selected}, "", "/status?job=" + encodeURIComponent(selected));
    }
    data.jobs.forEach(function (job) {
      var tr = body.appendChild(document.createElement("tr"));
      tr.dataset.job = job.id;
      if (job.id === selected) { tr.className = "selected"; }
      var link = tr.appendChild(document.createElement("td")).appendChild(document.createElement("a"));
      link.href = "/status?job=" + encodeURIComponent(job.id);
      link.textContent = job.view.run || job.id;
      link.title = job.id;
      td(tr, KIND_LABELS[job.view.kind] || job.kind);
      td(tr, job.kind === "train" ? "-" : job.spec.mode);
      td(tr, job.spec.online || "off");
      td(tr, F.clock(job.started_at || job.created_at), "num");
      td(tr, F.duration(elapsed(job, data.now)), "num");
      badge(tr.appendChild(document.createElement("td")), job.state);
      comparePick(tr, job);
      tr.addEventListener("click", function (ev) {
        ev.preventDefault();  // the link is there for a new tab; a plain click stays on the page
        select(job.id, true);
      });
    });
    return data.jobs.find(function (j) { return j.id === selected; });
  }

  /* The last cell: a box to tick a training run for the comparison (compare.js). */
  function comparePick(tr, job) {
    var cell = tr.appendChild(document.createElement("td"));
    if (job.kind !== "train") { return; }
    var box = cell.appendChild(document.createElement("input"));
    box.type = "checkbox";
    box.className = "compare-pick";
    box.title = "Compare this run";
    box.checked = window.Compare.isChosen(job.id);
    box.addEventListener("click", function (ev) { ev.stopPropagation(); window.Compare.toggle(job.id, box.checked); });
  }

  function renderFacts(job, now, waiting) {
    var p = job.progress || {};
    $("job-title").textContent = (job.view.run || job.id) + " \u00b7 " + (KIND_LABELS[job.view.kind] || job.kind);
    var state = $("job-state");
    state.textContent = "";
    badge(state, job.state);
    var link = $("job-link");
    link.href = "/status?job=" + encodeURIComponent(job.id);
    link.textContent = job.id;
    var results = $("job-results");
    results.hidden = !(job.kind === "predict" && job.state === "succeeded");
    results.href = "/jobs/" + encodeURIComponent(job.id) + "/results";
    var facts = [["Started", F.clock(job.started_at)], ["Duration", F.duration(elapsed(job, now))]];
    if (job.view.kind === "train") {
      facts.push(["Step", F.isNum(p.step) ? p.step + (p.total_steps ? " / " + p.total_steps : "") : "-"],
                 ["Epoch", F.num(p.epoch)], ["ETA", job.state === "running" ? F.duration(p.eta_s) : "-"],
                 ["Loss", F.num(p.loss)], ["Samples/s", F.num(p.samples_per_s)]);
    } else {
      facts.push(["Mode", job.spec.mode || "-"]);
    }
    facts.push(["Phase", p.phase || "-"], ["Online", job.spec.online || "off"], ["Attempts", job.attempts || 0]);
    var box = $("job-facts");
    box.textContent = "";
    facts.forEach(function (f) {
      var s = box.appendChild(document.createElement("span"));
      s.appendChild(document.createElement("b")).textContent = f[0] + ": ";
      s.appendChild(document.createTextNode(f[1]));
      if (f[0] === "Step" && p.total_steps) {
        var bar = s.appendChild(document.createElement("progress"));
        bar.max = p.total_steps;
        bar.value = Math.min(p.step || 0, p.total_steps);
      }
    });
    $("job-reason").textContent = job.reason || "";
    $("login-wait").hidden = !(waiting || p.phase === "waiting_for_login");
    $("cancel-job").hidden = !!TERMINAL[job.state];
    $("cancel-job").dataset.job = job.id;
  }

  function renderCrawler(pool, now) {
    $("crawler-summary").textContent = pool.ranks.length + " ranks \u00b7 " + pool.logged_in +
      " logged in \u00b7 queue " + pool.queue_depth;
    var body = $("crawler-table").querySelector("tbody");
    body.textContent = "";
    var fastest = Math.max.apply(null, [1].concat(pool.ranks.map(function (r) { return +r.pages_per_min || 0; })));
    pool.ranks.forEach(function (r) {
      var tr = body.appendChild(document.createElement("tr"));
      tr.dataset.rank = r.rank;
      td(tr, r.rank, "num");
      var login = tr.appendChild(document.createElement("td"));
      badge(login, r.state, LOGIN_LABELS[r.state]);
      if (r.state !== "logged_in") {
        login.appendChild(document.createTextNode(" "));
        var a = login.appendChild(document.createElement("a"));
        a.className = "qr-link";
        a.href = r.login_url;
        a.textContent = r.state === "waiting_for_scan" ? "scan its QR"
          : r.state === "needs_human" ? "pass its check (live view)" : "open login";
      }
      var rate = td(tr, F.num(r.pages_per_min), "num rate");
      var bar = rate.appendChild(document.createElement("meter"));
      bar.max = fastest;
      bar.value = +r.pages_per_min || 0;
      td(tr, F.num(r.pages), "num");
      td(tr, F.num(r.failures), "num");
      var why = td(tr, r.last_failure ? r.last_failure.reason : null, "reason-cell");
      if (r.last_failure) { why.title = (r.last_failure.query || "") + " \u00b7 " + F.ago(r.last_failure.ts, now); }
      td(tr, r.current_query || "idle", r.current_query ? "query" : "muted");
      td(tr, F.ago(r.last_seen || r.updated_at, now));
    });
    $("crawler-empty").hidden = pool.ranks.length > 0;
  }

  function refresh() {
    return fetchJson("/api/status").then(function (data) {
      var job = renderJobs(data);
      window.Compare.update(data.jobs);
      renderCrawler(data.crawler, data.now);
      $("job-detail").hidden = !job;
      if (!job) { return data; }
      var fresh = lastSeries.job !== job.id || !TERMINAL[lastSeries.state] || lastSeries.state !== job.state;
      if (!fresh) { renderFacts(job, data.now, false); return data; }
      return fetchJson("/jobs/" + encodeURIComponent(job.id) + "/series").then(function (s) {
        if (job.id !== selected) { return data; }  // another job was picked meanwhile
        lastSeries = {job: job.id, state: job.state};
        renderFacts(job, data.now, s.waiting_for_login);
        window.JobPanels.render(job.view.kind, s, job, data.now);
        root.dataset.rendered = job.id;
        root.dataset.renderedState = job.state;
        return data;
      });
    }).catch(function (e) { $("status-error").textContent = String(e); });
  }

  $("cancel-job").addEventListener("click", function () {
    var id = this.dataset.job, button = this;
    button.disabled = true;
    // Same-origin POST: the browser sends Origin, which the service checks against cross-site use.
    fetch("/jobs/" + encodeURIComponent(id) + "/cancel", {method: "POST", credentials: "same-origin"})
      .then(function (r) {
        return r.json().then(function (body) {
          $("cancel-result").textContent = r.ok ? "Cancel requested." : "Not cancelled: " + (body.detail || r.status);
        });
      })
      .catch(function (e) { $("cancel-result").textContent = "Not cancelled: " + e; })
      .then(function () { button.disabled = false; refresh(); });
  });

  window.addEventListener("popstate", function () {
    var job = new URLSearchParams(location.search).get("job") || "";
    if (job) { select(job, false); }
  });

  refresh();
  setInterval(refresh, 2000);
})();
