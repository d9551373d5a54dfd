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

  /* The round step (1, 2, 2.5 or 5 times a power of ten) nearest to `count` intervals. */
  function niceStep(span, count) {
    var raw = span / count, power = Math.pow(10, Math.floor(Math.log10(raw)));
    var best = power;
    [1, 2, 2.5, 5, 10].forEach(function (m) {
      if (Math.abs(Math.log(m * power / raw)) < Math.abs(Math.log(best / raw))) { best = m * power; }
    });
    return +best.toPrecision(12);  // 2.5 * 1e-5 is 2.4999...e-5 in floating point
  }

  /* Decimal places that write `step` exactly; negative for steps of tens, hundreds, ... */
  function stepDecimals(step) {
    for (var d = -15; d <= 15; d++) {
      var scaled = step * Math.pow(10, d);
      if (Math.round(scaled) >= 1 && Math.abs(scaled - Math.round(scaled)) < 1e-6 * scaled) { return d; }
    }
    return 15;
  }

  /* Tick values across [lo, hi] at a round step (`step`, or one chosen for about `count`
     intervals), with a formatter precise enough for the step so that neighbouring labels never
     read the same. */
  function ticks(lo, hi, count, step) {
    step = step || niceStep(hi - lo, count);
    var d = stepDecimals(step);
    var values = [];
    for (var k = Math.ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k++) { values.push(k * step); }
    var biggest = Math.max(Math.abs(lo), Math.abs(hi));
    var scientific = biggest >= 1e5 || biggest < 1e-3;
    function label(v) {
      if (Math.abs(v) < step * 1e-9) { return "0"; }
      if (scientific) {
        var digits = Math.floor(Math.log10(Math.abs(v)) + 1e-9) + d;
        return v.toExponential(Math.max(0, Math.min(20, digits)));
      }
      return v.toFixed(Math.max(0, d));
    }
    return {step: step, values: values, label: label};
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
    var yt = ticks(ys[0], ys[1], 4);
    // The y range widens to whole steps so the top and bottom gridlines carry labels.
    ys = [Math.floor(ys[0] / yt.step + 1e-9) * yt.step, Math.ceil(ys[1] / yt.step - 1e-9) * yt.step];
    yt = ticks(ys[0], ys[1], 4, yt.step);
    var xt = ticks(xs[0], xs[1], 4);
    var pw = W - m.l - m.r, ph = H - m.t - m.b;
    function sx(v) { return m.l + (v - xs[0]) / (xs[1] - xs[0]) * pw; }
    function sy(v) { return m.t + ph - (v - ys[0]) / (ys[1] - ys[0]) * ph; }
    var axes = el("g", {"class": "axes", stroke: "#c4c8d2", "font-size": "10", fill: "#4a5163"}, svg);
    yt.values.forEach(function (yv, i) {
      var y = sy(yv);
      el("line", {x1: m.l, x2: W - m.r, y1: y, y2: y, "stroke-dasharray": i ? "2,3" : ""}, axes);
      var lt = el("text", {x: m.l - 4, y: y + 3, "text-anchor": "end", stroke: "none", "class": "y-tick"}, axes);
      lt.textContent = yt.label(yv);
    });
    xt.values.forEach(function (xv) {
      var t = el("text", {x: sx(xv), y: m.t + ph + 12, "text-anchor": "middle", stroke: "none", "class": "x-tick"}, axes);
      t.textContent = xt.label(xv);
    });
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

  /* bars: [{label, value, max?, color?, note?}] drawn as horizontal bars. The drawing is as wide
     as its container in CSS pixels (a viewBox of fixed width would scale the text along with a
     wide container), so labels keep their 11px size and rows their height for any number of bars. */
  function bars(container, items, opts) {
    opts = opts || {};
    var row = 20, valueWidth = 64;
    var W = Math.max(240, Math.round(container.clientWidth) || 420);
    var H = Math.max(40, items.length * row + 8);
    var lw = Math.min(opts.labelWidth || 110, Math.round(W * 0.45));
    var svg = svgRoot(container, W, H, "bar-chart");
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    drawnBars.set(container, {items: items, opts: opts, width: W});
    if (!items.length) { empty(svg, W, H, opts.emptyText); return svg; }
    var max = opts.max || Math.max.apply(null, items.map(function (b) { return b.max || b.value; }).concat([1e-9]));
    var track = W - lw - valueWidth;
    items.forEach(function (b, i) {
      var y = 4 + i * row, w = Math.max(0, track * Math.min(1, (b.value || 0) / max));
      var label = el("text", {x: lw - 6, y: y + 12, "text-anchor": "end", "font-size": "11", fill: "#1d2330",
                              "class": "bar-label"}, svg);
      label.textContent = b.label;
      el("rect", {x: lw, y: y + 2, width: track, height: 12, fill: "#eef0f4"}, svg);
      el("rect", {x: lw, y: y + 2, width: w, height: 12, fill: b.color || COLORS[i % COLORS.length],
                  "class": "bar", "data-label": b.label}, svg);
      var v = el("text", {x: W - valueWidth + 6, y: y + 12, "font-size": "11", fill: "#4a5163"}, svg);
      v.textContent = b.note !== undefined ? b.note : fmt(b.value || 0);
    });
    return svg;
  }

  /* Bar charts are drawn at their container's width, so they are redrawn when it changes. */
  var drawnBars = new Map();
  function redrawResizedBars() {
    drawnBars.forEach(function (drawn, container) {
      if (!container.isConnected) { drawnBars.delete(container); return; }
      var width = Math.round(container.clientWidth);
      if (width && Math.abs(width - drawn.width) > 1) { bars(container, drawn.items, drawn.opts); }
    });
  }
  if (global.addEventListener) { global.addEventListener("resize", redrawResizedBars); }

  global.Charts = {line: line, bars: bars, format: fmt, ticks: ticks};
})(window);
