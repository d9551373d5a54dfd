/* Line charts on the status page, drawn by uPlot (vendored under /static/vendor/uplot).
   One chart per container, updated in place as a job's series grow; each container says in
   data-points how many points each of its lines has, and window.statusCharts keeps the uPlot
   instances, so a test or a person at the console can read what is drawn. */
(function () {
  "use strict";
  var COLORS = ["#3b6fd8", "#e0791a", "#1e9e50", "#9b4dca", "#d9534f", "#17a2b8"];
  var HEIGHT = 190;
  var charts = window.statusCharts = {};

  function destroy(el) {
    if (charts[el.id]) { charts[el.id].destroy(); delete charts[el.id]; }
  }

  // Steps, batches and passes are whole numbers: no tick at 1.5.
  var WHOLE_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2.5e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];

  /* Decimals that show a tick step exactly (0.0025 -> 4). */
  function decimalsOf(step) {
    for (var d = 0; d < 12; d++) {
      var scaled = step * Math.pow(10, d);
      if (Math.abs(Math.round(scaled) - scaled) < 1e-6 * Math.max(1, scaled)) { return d; }
    }
    return 12;
  }

  /* Tick labels precise enough that neighbours never read the same (a learning rate of 1e-5
     must not read 0), in exponent form for very small or large values. */
  function tickLabels(u, splits) {
    if (splits.length < 2) { return splits.map(window.Fmt.num); }
    var step = Math.abs(splits[1] - splits[0]);
    var biggest = Math.max.apply(null, splits.map(Math.abs));
    if (biggest !== 0 && (biggest < 1e-3 || biggest >= 1e5)) {
      var unit = Math.pow(10, Math.floor(Math.log10(biggest)));
      var digits = Math.min(6, decimalsOf(step / unit));
      return splits.map(function (v) { return v === 0 ? "0" : v.toExponential(digits); });
    }
    var d = decimalsOf(step);
    return splits.map(function (v) { return v.toFixed(d); });
  }

  /* Room for the y axis: as wide as its longest tick label (uPlot asks again as they change). */
  function labelRoom(u, values) {
    var longest = (values || []).reduce(function (n, v) { return Math.max(n, String(v).length); }, 4);
    return 16 + longest * 7;
  }

  function options(el, xLabel, series, yMin) {
    var y = {auto: true};
    if (yMin === 0) {
      // Counts and rates start at zero, so that their size reads right.
      y.range = function (u, lo, hi) { return [0, hi > 0 ? hi * 1.08 : 1]; };
    }
    return {
      width: Math.max(240, el.clientWidth), height: HEIGHT,
      scales: {x: {time: false}, y: y},
      axes: [{label: xLabel, size: 40, labelSize: 18, incrs: WHOLE_INCRS},
             {size: labelRoom, values: tickLabels}],
      legend: {show: true, live: false},
      series: [{label: xLabel}].concat(series.map(function (s, i) {
        return {label: s.label, stroke: s.color || COLORS[i % COLORS.length], width: 2,
                spanGaps: true, points: {show: true, size: 4}};
      }))
    };
  }

  /* xs: the x values; series: [{label, values (aligned with xs, null where none), color?}]. */
  function line(el, xs, series, opts) {
    opts = opts || {};
    var counts = series.map(function (s) { return s.values.filter(window.Fmt.isNum).length; });
    el.dataset.points = counts.join(",");
    if (!xs.length || counts.every(function (c) { return c === 0; })) {
      destroy(el);
      el.textContent = "";
      el.appendChild(document.createElement("p")).className = "empty";
      el.lastChild.textContent = opts.emptyText || "no data yet";
      return null;
    }
    var data = [xs].concat(series.map(function (s) { return s.values; }));
    var key = series.map(function (s) { return s.label; }).join("|");
    var chart = charts[el.id];
    if (chart && chart.cnclipKey === key) {
      chart.setData(data);
      return chart;
    }
    destroy(el);
    el.textContent = "";
    chart = new window.uPlot(options(el, opts.xLabel || "", series, opts.yMin), data, el);
    chart.cnclipKey = key;
    charts[el.id] = chart;
    return chart;
  }

  /* Values of key from a list of points, aligned with that list. */
  function column(points, key) {
    return points.map(function (p) { return window.Fmt.isNum(p[key]) ? p[key] : null; });
  }

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      Object.keys(charts).forEach(function (id) {
        var el = document.getElementById(id);
        if (el && el.clientWidth) { charts[id].setSize({width: Math.max(240, el.clientWidth), height: HEIGHT}); }
      });
    }, 150);
  });

  window.Plots = {line: line, column: column, tickLabels: tickLabels};
})();
