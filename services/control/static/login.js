/* Live crawler login cards: a snapshot and then per-rank updates over server-sent events,
   with a slow poll as a fallback when the stream is down. */
(function () {
  "use strict";
  var container = document.getElementById("ranks");
  var connection = document.getElementById("login-connection");
  var LABELS = {starting: "starting", waiting_for_scan: "waiting for scan", logged_in: "logged in",
                expired: "code expired", error: "error"};

  function ago(ts) {
    var s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 60) { return Math.round(s) + " s ago"; }
    if (s < 3600) { return Math.round(s / 60) + " min ago"; }
    return Math.round(s / 3600) + " h ago";
  }

  function card(rank) {
    var id = "rank-" + rank;
    var node = document.getElementById(id);
    if (node) { return node; }
    node = document.createElement("div");
    node.id = id;
    node.className = "card";
    node.dataset.rank = rank;
    node.innerHTML = '<h3>Rank ' + rank + ' <span class="badge state"></span></h3>' +
      '<div class="qr-slot"></div><div class="detail muted"></div>';
    var cards = Array.prototype.slice.call(container.children);
    var after = cards.find(function (c) { return +c.dataset.rank > rank; });
    container.insertBefore(node, after || null);
    return node;
  }

  function render(view) {
    var node = card(view.rank);
    node.className = "card state-" + view.state;
    node.dataset.state = view.state;
    var badge = node.querySelector(".badge");
    badge.className = "badge state state-" + view.state;
    badge.textContent = LABELS[view.state] || view.state;
    var slot = node.querySelector(".qr-slot");
    var showQr = view.has_qr && view.state !== "logged_in";
    var img = slot.querySelector("img.qr");
    if (showQr) {
      if (!img) {
        slot.innerHTML = "";
        img = document.createElement("img");
        img.className = "qr";
        img.alt = "QR code of rank " + view.rank;
        slot.appendChild(img);
      }
      if (img.getAttribute("src") !== view.qr_url) { img.setAttribute("src", view.qr_url); }
    } else {
      slot.innerHTML = '<div class="qr-missing">' +
        (view.state === "logged_in" ? "&#10003; logged in" : "no code to scan") + "</div>";
    }
    var detail = [view.host ? view.host + (view.pid ? ":" + view.pid : "") : "",
                  "since " + ago(view.since), view.detail || ""].filter(Boolean).join(" \u00b7 ");
    node.querySelector(".detail").textContent = detail;
  }

  function snapshot(views) {
    var seen = {};
    views.forEach(function (v) { seen[v.rank] = true; render(v); });
    Array.prototype.slice.call(container.children).forEach(function (c) {
      if (!seen[c.dataset.rank]) { c.remove(); }
    });
  }

  function poll() {
    fetch("/api/login", {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(snapshot).catch(function () {});
  }

  var source = new EventSource("/api/login/events");
  source.addEventListener("snapshot", function (e) { snapshot(JSON.parse(e.data)); });
  source.addEventListener("rank", function (e) { render(JSON.parse(e.data)); });
  source.onopen = function () { connection.textContent = "live"; };
  source.onerror = function () { connection.textContent = "reconnecting..."; };
  poll();
  setInterval(function () { if (source.readyState !== 1) { poll(); } }, 5000);
})();
