/* A small SVG chart library for the status page: line charts with axes and a legend, and
   horizontal bar charts. Draws into a container element; redrawing replaces the old SVG. */
(function (global) {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#3b6fe0", "#e0642b", "#1e9e50", "#9b4dca", "#d9534f", "#00a3a3", "#a37b00"];

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var key in attrs) { node.setAttribute(key, attrs[key]); }
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function fmt(v) {
    if (v === 0) { return "0"; }
    var a = Math.abs(v);
    if (a >= 1e4 || a < 1e-2) { return v.toExponential(1); }
    if (a >= 100) { return v.toFixed(0); }
    return (+v.toPrecision(3)).toString();
  }

  function extent(values) {
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) { if (v < lo) { lo = v; } if (v > hi) { hi = v; } });
    if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
    return [lo, hi];
  }

  function svgRoot(container, width, height, kind) {
    container.innerHTML = "";
    return el("svg", {viewBox: "0 0 " + width + " " + height, "class": "chart-svg " + kind,
                      role: "img", preserveAspectRatio: "xMidYMid meet"}, container);
  }

  function empty(svg, width, height, text) {
    var t = el("text", {x: width / 2, y: height / 2, "text-anchor": "middle", "class": "empty"}, svg);
    t.textContent = text || "no data yet";
  }

  /* series: [{name, points: [[x, y], ...]}] */
  function line(container, series, opts) {
    opts = opts || {};
    var W = 420, H = 220, m = {l: 52, r: 12, t: 10, b: opts.legend === false ? 28 : 46};
    var svg = svgRoot(container, W, H, "line-chart");
    var all = [];
    series.forEach(function (s) { s.points = s.points.filter(function (p) { return isFinite(p[0]) && isFinite(p[1]); }); all = all.concat(s.points); });
    if (!all.length) { empty(svg, W, H, opts.emptyText); return svg; }
    var xs = extent(all.map(function (p) { return p[0]; }));
    var ys = extent(all.map(function (p) { return p[1]; }));
    if (opts.yMin !== undefined) { ys[0] = Math.min(opts.yMin, ys[0]); }
    var pw = W - m.l - m.r, ph = H - m.t - m.b;
    function sx(v) { return m.l + (v - xs[0]) / (xs[1] - xs[0]) * pw; }
    function sy(v) { return m.t + ph - (v - ys[0]) / (ys[1] - ys[0]) * ph; }
    var axes = el("g", {"class": "axes", stroke: "#c4c8d2", "font-size": "10", fill: "#4a5163"}, svg);
    for (var i = 0; i <= 4; i++) {
      var yv = ys[0] + (ys[1] - ys[0]) * i / 4, y = sy(yv);
      el("line", {x1: m.l, x2: W - m.r, y1: y, y2: y, "stroke-dasharray": i ? "2,3" : ""}, axes);
      var lt = el("text", {x: m.l - 4, y: y + 3, "text-anchor": "end", stroke: "none"}, axes);
      lt.textContent = fmt(yv);
      var xv = xs[0] + (xs[1] - xs[0]) * i / 4;
      var xt = el("text", {x: sx(xv), y: m.t + ph + 12, "text-anchor": "middle", stroke: "none"}, axes);
      xt.textContent = fmt(xv);
    }
    if (opts.xLabel) {
      var xl = el("text", {x: m.l + pw, y: m.t + ph + 24, "text-anchor": "end", stroke: "none"}, axes);
      xl.textContent = opts.xLabel;
    }
    series.forEach(function (s, k) {
      if (!s.points.length) { return; }
      var color = s.color || COLORS[k % COLORS.length];
      var pts = s.points.map(function (p) { return sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); }).join(" ");
      el("polyline", {points: pts, fill: "none", stroke: color, "stroke-width": 1.8,
                      "class": "series", "data-series": s.name}, svg);
      if (s.points.length < 40) {
        s.points.forEach(function (p) { el("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.2, fill: color}, svg); });
      }
    });
    if (opts.legend !== false) {
      var lx = m.l;
      series.forEach(function (s, k) {
        var color = s.color || COLORS[k % COLORS.length];
        el("rect", {x: lx, y: H - 14, width: 10, height: 10, fill: color}, svg);
        var t = el("text", {x: lx + 14, y: H - 5, "font-size": "11", fill: "#1d2330"}, svg);
        var last = s.points.length ? s.points[s.points.length - 1][1] : null;
        t.textContent = s.name + (last === null ? "" : " " + fmt(last));
        lx += 26 + t.textContent.length * 6.2;
      });
    }
    return svg;
  }

  /* bars: [{label, value, max?, color?, note?}] drawn as horizontal bars */
  function bars(container, items, opts) {
    opts = opts || {};
    var row = 24, W = 420, H = Math.max(60, items.length * row + 16), lw = opts.labelWidth || 110;
    var svg = svgRoot(container, W, H, "bar-chart");
    if (!items.length) { empty(svg, W, H, opts.emptyText); return svg; }
    var max = opts.max || Math.max.apply(null, items.map(function (b) { return b.max || b.value; }).concat([1e-9]));
    items.forEach(function (b, i) {
      var y = 8 + i * row, w = Math.max(0, (W - lw - 70) * (b.value || 0) / max);
      var label = el("text", {x: lw - 6, y: y + 14, "text-anchor": "end", "font-size": "11", fill: "#1d2330"}, svg);
      label.textContent = b.label;
      el("rect", {x: lw, y: y + 3, width: W - lw - 70, height: 14, fill: "#eef0f4"}, svg);
      el("rect", {x: lw, y: y + 3, width: w, height: 14, fill: b.color || COLORS[i % COLORS.length],
                  "class": "bar", "data-label": b.label}, svg);
      var v = el("text", {x: W - 64, y: y + 14, "font-size": "11", fill: "#4a5163"}, svg);
      v.textContent = b.note !== undefined ? b.note : fmt(b.value || 0);
    });
    return svg;
  }

  global.Charts = {line: line, bars: bars, format: fmt};
})(window);
