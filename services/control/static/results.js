/* /jobs/{id}/results: a prediction job's ranking per query, optionally above another job's on the
   same texts. The choices live in the address (?compare=&filter=&sort=). */
(function () {
  "use strict";
  var F = window.Fmt;
  var form = document.getElementById("results-form");
  var job = form.dataset.job;
  var shown = 0, total = 0;
  function $(id) { return document.getElementById(id); }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function getJSON(url) {
    return fetch(url, {credentials: "same-origin"}).then(function (r) {
      if (r.ok) { return r.json(); }
      return r.json().then(function (b) {
        throw new Error(typeof b.detail === "string" ? b.detail : r.status + " " + r.statusText);
      }, function () { throw new Error(r.status + " " + r.statusText); });
    });
  }

  function thumbURL(gallery, id) {
    return "/api/search/gallery-thumb?" + new URLSearchParams({gallery: gallery, id: String(id)}).toString();
  }

  function strip(label, side, gallery, truth) {
    var line = el("div", "result-strip");
    var head = el("div", "strip-label");
    head.appendChild(el("b", null, label));
    head.appendChild(el("span", "muted", side.first_hit ? "first hit #" + side.first_hit : (truth.length ? "no hit" : "")));
    line.appendChild(head);
    var grid = el("div", "strip-thumbs");
    var wanted = {};
    truth.forEach(function (t) { wanted[String(t)] = true; });
    side.ranked.forEach(function (id, i) {
      var cell = el("figure", "thumb" + (wanted[String(id)] ? " truth" : ""));
      cell.dataset.id = String(id);
      if (gallery) {
        var img = el("img");
        img.src = thumbURL(gallery, id);
        img.alt = "image " + id;
        img.loading = "lazy";
        cell.appendChild(img);
      }
      var cap = el("figcaption");
      cap.appendChild(el("b", null, "#" + (i + 1)));
      cap.appendChild(el("span", "muted", "id " + id));
      cell.appendChild(cap);
      grid.appendChild(cell);
    });
    line.appendChild(grid);
    return line;
  }

  function row(r, data) {
    var box = el("section", "result-row");
    box.dataset.text = String(r.text_id);
    var head = el("h3", null, r.text);
    head.appendChild(el("span", "muted", " \u00b7 text " + r.text_id + (r.truth.length ? " \u00b7 truth " + r.truth.join(", ") : "")));
    if (r.change !== undefined && r.change !== 0) {
      var up = r.change > 0;
      head.appendChild(el("span", "change " + (up ? "better" : "worse"), (up ? " \u25b2 " : " \u25bc ") + Math.abs(r.change)));
    }
    box.appendChild(head);
    box.appendChild(strip(data.job, r.base, data.gallery, r.truth));
    if (r.other) { box.appendChild(strip(data.compare, r.other, data.compare_gallery || data.gallery, r.truth)); }
    return box;
  }

  function summaryText(s, data) {
    var part = function (name, x) {
      return name + ": R@1 " + F.num(x.r1) + " \u00b7 R@5 " + F.num(x.r5) + " \u00b7 R@10 " + F.num(x.r10);
    };
    var text = s.base.queries + " queries (" + s.base.with_truth + " with ground truth) \u00b7 " + part(data.job, s.base);
    if (s.other) {
      text += " | " + part(data.compare, s.other) + " | improved " + s.improved + ", worse " + s.worse + ", same " + s.same;
    }
    return text;
  }

  function params(offset) {
    var p = new URLSearchParams({filter: $("filter").value, sort: $("sort").value, offset: String(offset), limit: "50"});
    if ($("compare").value) { p.set("compare", $("compare").value); }
    return p;
  }

  function load(more) {
    var list = $("results-rows");
    if (!more) { list.textContent = ""; shown = 0; list.dataset.state = "loading"; }
    $("results-message").textContent = "";
    return getJSON("/jobs/" + encodeURIComponent(job) + "/results/data?" + params(shown).toString()).then(function (data) {
      $("results-summary").textContent = summaryText(data.summary, data);
      data.rows.forEach(function (r) { list.appendChild(row(r, data)); });
      shown += data.rows.length;
      total = data.total;
      $("results-more").hidden = shown >= total;
      list.dataset.state = "done";
    }, function (err) {
      $("results-message").textContent = err.message;
      list.dataset.state = "error";
    });
  }

  function start() {
    var q = new URLSearchParams(location.search);
    ["filter", "sort"].forEach(function (name) { if (q.get(name)) { $(name).value = q.get(name); } });
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var p = params(0);
      p.delete("offset"); p.delete("limit");
      history.replaceState(null, "", location.pathname + "?" + p.toString());
      load(false);
    });
    $("results-more").addEventListener("click", function () { load(true); });
    getJSON("/jobs?state=succeeded&limit=200").then(function (list) {
      list.jobs.filter(function (j) { return j.kind === "predict" && j.id !== job; }).forEach(function (j) {
        var option = el("option", null, j.id + (j.name ? " (" + j.name + ")" : ""));
        option.value = j.id;
        $("compare").appendChild(option);
      });
    }, function () { return null; }).then(function () {
      var wanted = q.get("compare");
      if (wanted) {
        if (!Array.prototype.some.call($("compare").options, function (o) { return o.value === wanted; })) {
          var option = el("option", null, wanted);
          option.value = wanted;
          $("compare").appendChild(option);
        }
        $("compare").value = wanted;
      }
      load(false);
    });
  }

  start();
})();
