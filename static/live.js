// The live sale view (/admin/live): asks for the admin token once (kept in
// sessionStorage: this tab only, gone when it closes; sent as a bearer token,
// never in the address), polls GET /admin/live/snapshot every second and
// draws it: tiles, an SVG chart of the last five minutes, tables of the
// latest numbers.
//
// Purchases per second are computed here, from successive snapshots: the
// growth of each running sale's `orders` (which only grows) over the growth
// of `taken_ms` (when the server read Redis; a snapshot served again from an
// instance's one-second cache carries the same `taken_ms` and is skipped).
// Behind a load balancer successive polls may reach different instances:
// their own counts (503s, master switches) are kept per instance, by the
// snapshot's `instance.id`, and added up (503s) or the highest shown
// (switches: every instance counts the same switch).
(function () {
  "use strict";

  var KEY = "flashsale.admin_token";
  var SNAPSHOT = "/admin/live/snapshot";
  var EVERY_MS = 1000;
  var WINDOW_MS = 5 * 60 * 1000;
  var X0 = 48, X1 = 592, Y0 = 20, Y1 = 210;

  var samples = [];     // {t, stock, total, rate}
  var marks = [];       // times of master changes seen
  var instances = {};   // id -> {data, heard}
  var lastBoard = null; // {t, orders: {sku: n}}
  var lastMasters = null;
  var timer = null;
  var running = false;

  function $(id) { return document.getElementById(id); }

  function token() {
    try { return window.sessionStorage.getItem(KEY); } catch (e) { return null; }
  }
  function setToken(t) {
    try {
      if (t) { window.sessionStorage.setItem(KEY, t); } else { window.sessionStorage.removeItem(KEY); }
    } catch (e) { /* storage off: the token lives until the page goes */ }
  }

  function say(text, kind) {
    var box = $("live-msg");
    box.className = "status" + (kind ? " " + kind : "");
    box.querySelector(".msg").textContent = text;
  }

  function num(n) {
    return n === null || n === undefined ? "unknown" : Number(n).toLocaleString();
  }
  function setValue(id, value, text) {
    var el = $(id);
    el.textContent = text !== undefined ? text : num(value);
    el.setAttribute("data-value", value === null || value === undefined ? "" : String(value));
  }
  function age(ms) {
    if (ms === null || ms === undefined) { return "none waiting"; }
    if (ms < 1000) { return ms + " ms"; }
    if (ms < 120000) { return (ms / 1000).toFixed(1) + " s"; }
    return Math.round(ms / 60000) + " min";
  }
  function clock(ms) {
    return new Date(ms).toLocaleTimeString();
  }

  function showLogin(message) {
    stop();
    $("live-login").hidden = false;
    if (message) { say(message, "error"); }
    $("live-token").focus();
  }

  function stop() {
    running = false;
    if (timer) { window.clearTimeout(timer); timer = null; }
  }

  function start() {
    $("live-login").hidden = true;
    running = true;
    say("Connecting…", "info");
    poll();
  }

  function next() {
    if (running) { timer = window.setTimeout(poll, EVERY_MS); }
  }

  function poll() {
    timer = null;
    var t = token();
    if (!t) { showLogin(""); return; }
    var ctl = typeof AbortController === "function" ? new AbortController() : null;
    var cut = ctl ? window.setTimeout(function () { ctl.abort(); }, 5000) : null;
    fetch(SNAPSHOT, {
      headers: { "Authorization": "Bearer " + t, "Accept": "application/json" },
      cache: "no-store",
      credentials: "same-origin",
      signal: ctl ? ctl.signal : undefined,
    }).then(function (r) {
      if (cut) { window.clearTimeout(cut); }
      if (r.status === 401) {
        setToken(null);
        showLogin("The admin token was refused. Enter it again.");
        return null;
      }
      if (r.status === 404) {
        say("The admin API is off on the instance that answered (no admin token set there). Retrying.", "error");
        return null;
      }
      if (!r.ok) {
        say("The instance answered " + r.status + "; retrying every second.", "error");
        return null;
      }
      return r.json();
    }).then(function (snap) {
      if (snap) { take(snap); }
    }).catch(function () {
      if (cut) { window.clearTimeout(cut); }
      say("No answer from the service; retrying every second.", "error");
    }).then(next);
  }

  // ------------------------------------------------------------- numbers --

  function take(snap) {
    var t = snap.taken_ms;
    var inst = snap.instance;
    instances[inst.id] = { data: inst, heard: Date.now() };
    var masters = inst.masters.join(", ");
    if (lastMasters !== null && masters !== lastMasters && masters !== "") { marks.push(t); }
    if (masters !== "") { lastMasters = masters; }

    if (!lastBoard || t > lastBoard.t) {
      var orders = {};
      var made = 0;
      snap.sales.forEach(function (s) {
        orders[s.sku] = s.orders;
        if (lastBoard && lastBoard.orders[s.sku] !== undefined) {
          made += Math.max(0, s.orders - lastBoard.orders[s.sku]);
        }
      });
      var rate = lastBoard ? made * 1000 / (t - lastBoard.t) : null;
      samples.push({ t: t, stock: snap.totals.stock_left, total: snap.totals.stock_total, rate: rate });
      lastBoard = { t: t, orders: orders };
      while (samples.length && samples[0].t < t - WINDOW_MS) { samples.shift(); }
      while (marks.length && marks[0] < t - WINDOW_MS) { marks.shift(); }
    }
    $("live-board").hidden = false;
    say("", "");
    tiles(snap);
    salesTable(snap.sales);
    instancesTable();
    chart();
    $("live-updated").textContent = "Updated " + clock(Date.parse(snap.server_time)) + " (server time)";
  }

  function latestRate() {
    for (var i = samples.length - 1; i >= 0; i--) {
      if (samples[i].rate !== null) { return samples[i].rate; }
    }
    return null;
  }

  function tiles(snap) {
    var tot = snap.totals;
    setValue("live-stock-left", tot.stock_left);
    $("live-stock-note").textContent = "of " + num(tot.stock_total) + ", " + snap.sales.length +
      (snap.sales.length === 1 ? " running sale" : " running sales");
    var rate = latestRate();
    setValue("live-rate", rate === null ? null : Math.round(rate * 10) / 10,
      rate === null ? "…" : (Math.round(rate * 10) / 10).toLocaleString());
    var n503 = 0, switches = 0, ids = Object.keys(instances);
    ids.forEach(function (id) {
      var d = instances[id].data;
      n503 += d.unavailable;
      switches = Math.max(switches, d.master_switches);
    });
    setValue("live-503", n503);
    $("live-503-note").textContent = "on the " + ids.length + (ids.length === 1 ? " instance" : " instances") +
      " this page heard from";
    setValue("live-switches", switches);
    var master = $("live-master");
    master.textContent = snap.instance.masters.length ? snap.instance.masters.join(", ") : "none (failing over)";
    setValue("live-queued", tot.queued);
    $("live-oldest").textContent = age(tot.oldest_queued_ms);
    setValue("live-lag", tot.worker_lag);
    $("live-pending").textContent = num(tot.worker_pending);
    setValue("live-dead", tot.dead_letters);
  }

  function cell(tr, text, header) {
    var c = document.createElement(header ? "th" : "td");
    if (header) { c.setAttribute("scope", "row"); }
    c.textContent = text;
    tr.appendChild(c);
    return c;
  }

  function salesTable(sales) {
    var body = $("live-sales").querySelector("tbody");
    var rows = document.createDocumentFragment();
    if (!sales.length) {
      var none = document.createElement("tr");
      cell(none, "No sale is running.").setAttribute("colspan", "10");
      rows.appendChild(none);
    }
    sales.forEach(function (s) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-sku", s.sku);
      cell(tr, s.name + " (" + s.sku + ")", true);
      cell(tr, s.state.replace("_", " "));
      cell(tr, num(s.stock_left) + " of " + num(s.stock_total)).setAttribute("data-value", String(s.stock_left));
      cell(tr, num(s.sold));
      cell(tr, num(s.orders));
      cell(tr, num(s.queued));
      cell(tr, age(s.oldest_queued_ms));
      cell(tr, num(s.worker_pending));
      cell(tr, num(s.worker_lag));
      cell(tr, num(s.dead_letters));
      rows.appendChild(tr);
    });
    body.replaceChildren(rows);
  }

  function instancesTable() {
    var body = $("live-instances").querySelector("tbody");
    var rows = document.createDocumentFragment();
    Object.keys(instances).sort().forEach(function (id) {
      var d = instances[id].data;
      var tr = document.createElement("tr");
      cell(tr, id, true);
      cell(tr, d.masters.length ? d.masters.join(", ") : "none");
      cell(tr, num(d.master_switches));
      cell(tr, num(d.unavailable));
      cell(tr, d.purchases.length ? d.purchases.map(function (p) { return p.outcome + " " + num(p.count); }).join(", ") : "none yet");
      cell(tr, clock(instances[id].heard));
      rows.appendChild(tr);
    });
    body.replaceChildren(rows);
  }

  // --------------------------------------------------------------- chart --

  function nice(v) {
    if (v <= 1) { return 1; }
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * p >= v) { return steps[i] * p; }
    }
    return 10 * p;
  }

  function compact(v) {
    try {
      return new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 }).format(v);
    } catch (e) {
      return String(v);
    }
  }

  function chart() {
    var svg = $("live-chart");
    if (!samples.length) { return; }
    // The last five minutes; while there is less to show, at least one.
    var now = samples[samples.length - 1].t;
    var span = Math.min(WINDOW_MS, Math.max(60000, now - samples[0].t));
    var from = now - span;
    var stockMax = nice(Math.max.apply(null, samples.map(function (s) { return s.total; }).concat([1])));
    var rateMax = nice(Math.max.apply(null, samples.map(function (s) { return s.rate || 0; }).concat([1])));
    function x(t) { return (X0 + (t - from) * (X1 - X0) / span).toFixed(1); }
    function y(v, max) { return (Y1 - v * (Y1 - Y0) / max).toFixed(1); }
    $("live-line-stock").setAttribute("points", samples.map(function (s) {
      return x(s.t) + "," + y(s.stock, stockMax);
    }).join(" "));
    $("live-line-rate").setAttribute("points", samples.filter(function (s) { return s.rate !== null; }).map(function (s) {
      return x(s.t) + "," + y(s.rate, rateMax);
    }).join(" "));
    $("live-axis-stock").textContent = compact(stockMax);
    $("live-axis-rate").textContent = compact(rateMax) + "/s";
    $("live-axis-from").textContent = "\u2212" + Math.round(span / 60000) + " min";
    var g = $("live-switch-marks");
    var ns = "http://www.w3.org/2000/svg";
    var lines = document.createDocumentFragment();
    marks.forEach(function (t) {
      var l = document.createElementNS(ns, "line");
      l.setAttribute("x1", x(t)); l.setAttribute("x2", x(t));
      l.setAttribute("y1", String(Y0)); l.setAttribute("y2", String(Y1));
      lines.appendChild(l);
    });
    g.replaceChildren(lines);
    svg.setAttribute("data-points", String(samples.length));
    svg.setAttribute("data-marks", String(marks.length));
    var last = samples[samples.length - 1];
    $("live-chart-desc").textContent = "Now " + num(last.stock) + " units left" +
      (last.rate === null ? "" : ", " + (Math.round(last.rate * 10) / 10) + " purchases per second") +
      "; " + marks.length + " master switches in the window. The latest numbers are in the tables below.";
  }

  // ---------------------------------------------------------------- start --

  function init() {
    $("live-login").addEventListener("submit", function (e) {
      e.preventDefault();
      var v = $("live-token").value.trim();
      if (!v) { return; }
      setToken(v);
      $("live-token").value = "";
      start();
    });
    $("live-forget").addEventListener("click", function () {
      setToken(null);
      $("live-board").hidden = true;
      showLogin("");
      say("The token is forgotten in this tab.", "info");
    });
    if (token()) { start(); } else { showLogin(""); }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
