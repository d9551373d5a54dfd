/* How figures read on the pages: numbers at a sensible precision, durations, clock times. */
(function () {
  "use strict";
  function isNum(v) { return typeof v === "number" && isFinite(v); }

  function num(v) {
    if (v === undefined || v === null || v === "") { return "-"; }
    v = +v;
    if (!isFinite(v)) { return "-"; }
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) { return v.toExponential(2); }
    if (Number.isInteger(v)) { return String(v); }
    return String(+v.toFixed(a >= 100 ? 1 : a >= 1 ? 2 : 4));
  }

  function duration(s) {
    if (!isNum(s)) { return "-"; }
    if (s < 10) { return +Math.max(0, s).toFixed(1) + "s"; }  // short steps: a tenth matters
    s = Math.round(s);
    var h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  /* Local time of a unix timestamp; the date too when it is not today. */
  function clock(ts) {
    if (!isNum(ts)) { return "-"; }
    var d = new Date(ts * 1000), today = new Date();
    var time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    if (d.toDateString() === today.toDateString()) { return time; }
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + time;
  }

  function ago(ts, now) {
    if (!isNum(ts)) { return "-"; }
    var s = Math.max(0, (isNum(now) ? now : Date.now() / 1000) - ts);
    if (s < 60) { return Math.round(s) + " s ago"; }
    if (s < 3600) { return Math.round(s / 60) + " min ago"; }
    return Math.round(s / 3600) + " h ago";
  }

  /* m:ss, for countdowns. */
  function countdown(s) {
    s = Math.max(0, Math.round(s));
    return Math.floor(s / 60) + ":" + pad(s % 60);
  }

  window.Fmt = {isNum: isNum, num: num, duration: duration, clock: clock, ago: ago, countdown: countdown};
})();
