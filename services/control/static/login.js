/* Live crawler login cards: a snapshot and then per-rank updates over server-sent events,
   with a slow poll as a fallback when the stream is down. Each waiting card shows its code
   large enough to scan from across a desk, the site it logs into, and how long the code lasts. */
(function () {
  "use strict";
  var F = window.Fmt;
  var container = document.getElementById("ranks");
  var connection = document.getElementById("login-connection");
  var LABELS = {starting: "starting", waiting_for_scan: "waiting for scan", logged_in: "logged in",
                expired: "code expired", error: "error", needs_human: "needs you"};
  var expiries = {};  // rank -> browser time (ms) at which its code expires

  function card(rank) {
    var id = "rank-" + rank;
    var node = document.getElementById(id);
    if (node) { return node; }
    node = document.createElement("div");
    node.id = id;
    node.className = "card";
    node.dataset.rank = rank;
    var head = node.appendChild(document.createElement("h3"));
    head.textContent = "Rank " + rank + " ";
    head.appendChild(document.createElement("span")).className = "badge state";
    node.appendChild(document.createElement("div")).className = "site";
    node.appendChild(document.createElement("div")).className = "qr-slot";
    node.appendChild(document.createElement("div")).className = "expiry";
    node.appendChild(document.createElement("div")).className = "detail muted";
    var cards = Array.prototype.slice.call(container.children);
    var after = cards.find(function (c) { return +c.dataset.rank > rank; });
    container.insertBefore(node, after || null);
    return node;
  }

  function renderSite(node, view) {
    var site = node.querySelector(".site");
    site.textContent = "";
    if (!view.site && !view.site_url) { return; }
    site.appendChild(document.createTextNode("logs into "));
    var url = /^https?:\/\//.test(view.site_url || "") ? view.site_url : "";  // never a javascript: link
    var name = site.appendChild(document.createElement(url ? "a" : "b"));
    name.textContent = view.site || url;
    if (url) {
      name.href = url;
      name.rel = "noreferrer";
      name.target = "_blank";
      site.appendChild(document.createTextNode(" (" + url.replace(/^https?:\/\//, "") + ")"));
    }
  }

  function render(view) {
    var node = card(view.rank);
    node.className = "card state-" + view.state;
    node.dataset.state = view.state;
    var badge = node.querySelector(".badge");
    badge.className = "badge state state-" + view.state;
    badge.textContent = LABELS[view.state] || view.state;
    renderSite(node, view);
    var slot = node.querySelector(".qr-slot");
    var showQr = view.has_qr && view.state !== "logged_in";
    var img = slot.querySelector("img.qr");
    if (showQr) {
      if (!img) {
        slot.textContent = "";
        img = slot.appendChild(document.createElement("img"));
        img.className = "qr";
        img.alt = "QR code of rank " + view.rank;
      }
      if (img.getAttribute("src") !== view.qr_url) { img.setAttribute("src", view.qr_url); }
    } else {
      slot.textContent = "";
      slot.appendChild(document.createElement("div")).className = "qr-missing";
      slot.firstChild.textContent = view.state === "logged_in" ? "\u2713 logged in" : "no code to scan";
    }
    if (showQr && F.isNum(view.qr_expires_in_s)) {
      expiries[view.rank] = Date.now() + view.qr_expires_in_s * 1000;
    } else {
      delete expiries[view.rank];
    }
    tick(node, view.rank);
    var detail = [view.host ? view.host + (view.pid ? ":" + view.pid : "") : "",
                  "since " + F.ago(view.since), view.detail || ""].filter(Boolean).join(" \u00b7 ");
    node.querySelector(".detail").textContent = detail;
  }

  function tick(node, rank) {
    var out = node.querySelector(".expiry");
    if (!(rank in expiries)) { out.textContent = ""; out.className = "expiry"; return; }
    var left = (expiries[rank] - Date.now()) / 1000;
    out.className = "expiry" + (left < 30 ? " soon" : "");
    out.dataset.secondsLeft = Math.max(0, Math.round(left));
    out.textContent = left > 0 ? "code valid for " + F.countdown(left) : "a new code is on its way";
  }

  function snapshot(views) {
    var seen = {};
    views.forEach(function (v) { seen[v.rank] = true; render(v); });
    Array.prototype.slice.call(container.children).forEach(function (c) {
      if (!seen[c.dataset.rank]) { delete expiries[c.dataset.rank]; c.remove(); }
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
  setInterval(function () {
    Object.keys(expiries).forEach(function (rank) {
      var node = document.getElementById("rank-" + rank);
      if (node) { tick(node, +rank); }
    });
  }, 1000);
})();
