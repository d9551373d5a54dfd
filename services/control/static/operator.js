/* The operator in the loop: every rank whose page needs a person (a slider) gets a live view
   here, a few frames a second, cut to the check's region first ("whole page" shows all of it).
   The pointer (press, the path dragged, release, clicks, wheel) and keys on the view are sent,
   in order and in the page's own CSS pixels, to the rank's browser, which replays them as
   trusted input. Polling also tells idle ranks that someone has this page open. */
(function () {
  "use strict";
  var host = document.getElementById("operator");
  if (!host) { return; }
  var views = {};   // rank -> {node, img, live, queue, whole}
  var POLL_MS = 1000, FRAME_MS = 250, SEND_MS = 40;

  function text(tag, className, content) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (content) { node.textContent = content; }
    return node;
  }

  function view(rank) {
    if (views[rank]) { return views[rank]; }
    var node = text("section", "needs-you");
    node.id = "needs-you-" + rank;
    node.dataset.rank = rank;
    node.appendChild(text("h2", "", "Rank " + rank + " needs you"));
    var detail = node.appendChild(text("p", "detail"));
    var tools = node.appendChild(text("div", "live-tools"));
    var toggle = tools.appendChild(text("button", "", "Whole page"));
    toggle.type = "button";
    var box = node.appendChild(text("div", "live-view"));
    box.tabIndex = 0;
    box.setAttribute("aria-label", "Live view of rank " + rank + "'s browser: drag and type here");
    var img = box.appendChild(document.createElement("img"));
    img.alt = "";
    var v = {rank: rank, node: node, box: box, img: img, detail: detail, live: null, queue: [],
             whole: false, pressed: false, lastMove: 0};
    toggle.addEventListener("click", function () {
      v.whole = !v.whole;
      toggle.textContent = v.whole ? "The check only" : "Whole page";
      layout(v);
    });
    bind(v);
    host.appendChild(node);
    views[rank] = v;
    return v;
  }

  function layout(v) {
    var live = v.live;
    if (!live) { return; }
    var r = live.region;
    v.box.classList.toggle("whole", v.whole);
    if (v.whole) {
      v.box.style.width = live.width + "px";
      v.box.style.height = live.height + "px";
      v.img.style.left = "0px";
      v.img.style.top = "0px";
    } else {
      v.box.style.width = r[2] + "px";
      v.box.style.height = r[3] + "px";
      v.img.style.left = -r[0] + "px";
      v.img.style.top = -r[1] + "px";
    }
    v.img.style.width = live.width + "px";
    v.img.style.height = live.height + "px";
  }

  // Where on the page (CSS pixels of the crawler's viewport) a point of the view is.
  function pagePoint(v, event) {
    var rect = v.img.getBoundingClientRect();
    var scale = v.live.width / rect.width;
    return {x: Math.max(0, (event.clientX - rect.left) * scale),
            y: Math.max(0, (event.clientY - rect.top) * scale)};
  }

  function push(v, event) {
    if (!v.live) { return; }
    v.queue.push(event);
  }

  function bind(v) {
    v.box.addEventListener("pointerdown", function (e) {
      if (e.button !== 0) { return; }
      v.box.focus();
      v.box.setPointerCapture(e.pointerId);
      v.pressed = true;
      var p = pagePoint(v, e);
      push(v, {kind: "mouseMoved", x: p.x, y: p.y});
      push(v, {kind: "mousePressed", x: p.x, y: p.y});
      e.preventDefault();
    });
    v.box.addEventListener("pointermove", function (e) {
      var now = performance.now();
      if (!v.pressed && now - v.lastMove < 50) { return; }  // hovering: fewer moves
      v.lastMove = now;
      var p = pagePoint(v, e);
      push(v, {kind: "mouseMoved", x: p.x, y: p.y});
    });
    function release(e) {
      if (!v.pressed) { return; }
      v.pressed = false;
      var p = pagePoint(v, e);
      push(v, {kind: "mouseReleased", x: p.x, y: p.y});
    }
    v.box.addEventListener("pointerup", release);
    v.box.addEventListener("pointercancel", release);
    v.box.addEventListener("wheel", function (e) {
      var p = pagePoint(v, e);
      push(v, {kind: "wheel", x: p.x, y: p.y, delta_y: e.deltaY});
      e.preventDefault();
    }, {passive: false});
    v.box.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey) { return; }
      if (e.key.length === 1) { push(v, {kind: "text", text: e.key}); }
      else { push(v, {kind: "key", key: e.key}); }
      e.preventDefault();
    });
  }

  var sending = false;
  function send() {
    if (sending) { return; }
    Object.keys(views).forEach(function (rank) {
      var v = views[rank];
      if (!v.queue.length || !v.live || sending) { return; }
      var events = v.queue.splice(0, 200);
      sending = true;
      fetch("/api/operator/" + rank + "/input", {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({challenge: v.live.challenge, events: events})
      }).catch(function () {}).then(function () { sending = false; });
    });
  }

  function refreshFrames() {
    Object.keys(views).forEach(function (rank) {
      var v = views[rank];
      if (!v.live) { return; }
      var next = new Image();
      next.onload = function () { v.img.src = next.src; v.node.dataset.frames = (+v.node.dataset.frames || 0) + 1; };
      next.src = "/api/operator/" + rank + "/frame.jpg?t=" + Date.now();
    });
  }

  function poll() {
    fetch("/api/operator/live", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.ok ? r.json() : []; })
      .then(function (list) {
        var seen = {};
        list.forEach(function (item) {
          seen[item.rank] = true;
          var v = view(item.rank);
          v.detail.textContent = item.detail || "";
          var changed = !v.live || !item.live || v.live.challenge !== (item.live && item.live.challenge);
          v.live = item.live;
          v.node.dataset.challenge = item.live ? item.live.challenge : "";
          if (changed) { v.queue = []; }
          layout(v);
        });
        Object.keys(views).forEach(function (rank) {
          if (!seen[rank]) { views[rank].node.remove(); delete views[rank]; }
        });
        host.hidden = !list.length;
      })
      .catch(function () {});
  }

  poll();
  setInterval(poll, POLL_MS);
  setInterval(refreshFrames, FRAME_MS);
  setInterval(send, SEND_MS);
})();
