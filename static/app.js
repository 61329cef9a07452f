// flashsale page script: fills the live parts of the cached pages (stock
// left, state, countdown synchronised to the server clock, the Buy button,
// order status). No framework, no third-party code, no inline script (the
// pages' CSP is script-src 'self').
(function () {
  "use strict";

  // ---- the server's clock ----
  // skew = server time minus local time, in ms, from the answer with the
  // shortest round trip seen (its error is at most half that round trip).
  var skew = 0, bestRtt = Infinity, synced = false;

  function $(id) { return document.getElementById(id); }
  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }
  function now() { return Date.now() + skew; }

  function learnTime(serverTime, t0, t1) {
    var st = Date.parse(serverTime);
    if (isNaN(st)) { return; }
    var rtt = t1 - t0;
    // A later sample replaces a better one only when it is nearly as good:
    // the local clock may have been changed meanwhile.
    if (!synced || rtt <= bestRtt + 50) {
      skew = st - (t0 + t1) / 2;
      bestRtt = Math.min(bestRtt, rtt);
      synced = true;
    }
  }

  function getJSON(url) {
    var t0 = Date.now();
    return fetch(url, { credentials: "same-origin", cache: "no-store", headers: { "Accept": "application/json" } })
      .then(function (r) {
        var t1 = Date.now();
        return r.json().catch(function () { return {}; }).then(function (body) {
          return { status: r.status, body: body, headers: r.headers, t0: t0, t1: t1 };
        });
      });
  }

  function newKey() {
    if (window.crypto && crypto.randomUUID) { return crypto.randomUUID(); }
    var a = new Uint8Array(16);
    crypto.getRandomValues(a);
    return Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function fmtDuration(ms) {
    var s = Math.max(0, Math.ceil(ms / 1000));
    var d = Math.floor(s / 86400); s -= d * 86400;
    var h = Math.floor(s / 3600); s -= h * 3600;
    var m = Math.floor(s / 60); s -= m * 60;
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return (d ? d + "d " : "") + pad(h) + ":" + pad(m) + ":" + pad(s);
  }

  // Refreshes every `ms` (± 20 %, so a crowd's polls spread out), less
  // often while the tab is hidden.
  function every(ms, fn) {
    function tick() {
      var wait = ms * (0.8 + Math.random() * 0.4) * (document.hidden ? 5 : 1);
      setTimeout(function () { Promise.resolve(fn()).then(tick, tick); }, wait);
    }
    tick();
  }

  // Screen readers hear state changes (sale opened, sold out) once, here;
  // the countdown itself ticks silently.
  function announce(text) {
    var a = $("announce");
    if (a) { a.textContent = text; }
  }

  var STATE_TEXT = { upcoming: "Opens soon", live: "On sale now", paused: "Paused", sold_out: "Sold out", ended: "Ended" };

  // Prices in the shopper's locale and the sale's currency: the page says
  // `299.00 EUR` (the same for everyone, so it can be cached); this makes it
  // `299,00 €` in German, `€299.00` in English. Amounts are integers in the
  // currency's minor units (data-minor-digits: 2 for EUR, 0 for JPY).
  // The shopper's languages, most preferred first (Intl's own default is the
  // engine's, which headless and embedded browsers do not always align).
  function locales() {
    return navigator.languages && navigator.languages.length ? navigator.languages : undefined;
  }

  function localPrices() {
    document.querySelectorAll("data.money[data-currency]").forEach(function (d) {
      var minor = Number(d.getAttribute("value"));
      var digits = Number(d.getAttribute("data-minor-digits"));
      var currency = d.getAttribute("data-currency");
      if (!isFinite(minor) || !(digits >= 0 && digits <= 4)) { return; }
      try {
        d.textContent = new Intl.NumberFormat(locales(), {
          style: "currency", currency: currency,
          minimumFractionDigits: digits, maximumFractionDigits: digits
        }).format(minor / Math.pow(10, digits));
      } catch (e) { /* an engine without Intl: the plain price stays */ }
    });
  }

  function localTimes() {
    var fmt = null;
    try {
      fmt = new Intl.DateTimeFormat(locales(), { day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short" });
    } catch (e) { fmt = null; }
    document.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) { t.textContent = fmt ? fmt.format(d) : d.toLocaleString(); }
    });
  }

  // ---- product page ----
  function productPage(root) {
    var sku = root.getAttribute("data-sku");
    var starts = Date.parse(root.getAttribute("data-starts"));
    var ends = Date.parse(root.getAttribute("data-ends"));
    var button = $("buy"), status = $("status"), msg = $("status-msg"), orderLine = $("status-order");
    var stock = $("stock-left"), countdown = $("countdown");
    var product = null, busy = false, done = false, failures = 0, shownState = null, atStart = null;

    function say(text, kind, orderId) {
      msg.textContent = text;
      orderLine.textContent = orderId ? "Order number " + orderId : "";
      status.className = "status" + (kind ? " " + kind : "");
    }

    function state() {
      var t = now();
      var s = product ? product.state : null;
      if (t >= ends || s === "ended") { return "ended"; }
      if (s === "paused") { return "paused"; }
      if (s === "sold_out") { return "sold_out"; }
      if (t < starts) { return "upcoming"; }
      return "live";
    }

    function render() {
      if (!synced) {
        countdown.textContent = failures ? "Cannot reach the shop — retrying…" : "Checking the sale…";
        countdown.setAttribute("data-state", "loading");
        button.disabled = true;
        return;
      }
      var t = now(), st = state();
      if (product) { stock.textContent = st === "sold_out" ? 0 : product.stock_left; }
      if (st === "upcoming") {
        countdown.textContent = "Opens in " + fmtDuration(starts - t);
        // The last second: open at the start itself, not at the next tick.
        if (!atStart && starts - t < 1500) {
          atStart = setTimeout(function () { atStart = null; render(); }, starts - t + 1);
        }
      } else if (st === "live") {
        countdown.textContent = "On sale now — closes in " + fmtDuration(ends - t);
      } else if (st === "sold_out") {
        countdown.textContent = "Sold out";
      } else if (st === "paused") {
        countdown.textContent = "Sales are paused for the moment — this page follows when they resume";
      } else {
        countdown.textContent = "This sale has ended";
      }
      countdown.setAttribute("data-state", st);
      if (st !== shownState) {
        if (shownState !== null || st !== "upcoming") {
          announce({ upcoming: "The sale has not opened yet.", live: "The sale is open: you can buy now.", paused: "The sale is paused.", sold_out: "Sold out.", ended: "This sale has ended." }[st]);
        }
        shownState = st;
      }
      button.disabled = busy || done || st !== "live";
      button.setAttribute("aria-busy", busy ? "true" : "false");
    }

    function refresh() {
      return getJSON("/api/products/" + encodeURIComponent(sku)).then(function (r) {
        if (r.status === 200) {
          product = r.body;
          failures = 0;
          learnTime(r.body.server_time, r.t0, r.t1);
        } else {
          failures += 1;
        }
        render();
      }).catch(function () { failures += 1; render(); });
    }

    function follow(orderId) {
      var tries = 0;
      function poll() {
        return getJSON("/api/orders/" + encodeURIComponent(orderId)).then(function (r) {
          if (r.status === 200 && r.body.status === "confirmed") {
            say("Order confirmed. Thank you!", "ok", orderId);
            return;
          }
          if (r.status === 200) {
            say("Order " + r.body.status + " — waiting for confirmation…", "ok", orderId);
          }
          tries += 1;
          if (tries < 120) { return sleep(Math.min(500 * tries, 3000)).then(poll); }
          say("Your order is placed; its confirmation is taking longer than usual. See My orders.", "info", orderId);
        }).catch(function () { tries += 1; if (tries < 120) { return sleep(2000).then(poll); } });
      }
      return poll();
    }

    function buy(qty) {
      var key = newKey(), attempt = 0, early = 0;
      function once() {
        return fetch("/api/sales/" + encodeURIComponent(sku) + "/purchase", {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", "Accept": "application/json", "Idempotency-Key": key },
          body: JSON.stringify({ qty: qty })
        }).then(function (r) {
          return r.json().catch(function () { return {}; }).then(function (body) {
            return { status: r.status, body: body, retryAfter: Number(r.headers.get("Retry-After")) || 0 };
          });
        }).catch(function () { return { status: 0, body: {}, retryAfter: 0 }; });
      }
      function go() {
        return once().then(function (r) {
          if (r.status === 202) {
            done = true;
            say("Order placed — waiting for confirmation…", "ok", r.body.order_id);
            return follow(r.body.order_id);
          }
          if (r.status === 409) {
            done = true;
            say("You already bought as many as this sale allows.", "info", r.body.order_id);
            return follow(r.body.order_id);
          }
          // Busy or unreachable: the same key again, so a purchase that did
          // go through is found, not made twice.
          if ((r.status === 503 || r.status === 0 || r.status === 502 || r.status === 504) && attempt < 6) {
            attempt += 1;
            var wait = Math.max(r.retryAfter * 1000, 250 * Math.pow(2, attempt)) + Math.random() * 250;
            say("The shop is busy — retrying your order (attempt " + (attempt + 1) + ")…", "info");
            return sleep(wait).then(go);
          }
          // Pressed in the last moments before the shop's clock says open:
          // wait for it, then try again with the same key.
          if (r.status === 425 && early < 2 && starts - now() < 3000) {
            early += 1;
            say("Opening… one moment.", "info");
            return sleep(Math.max(0, starts - now()) + 300 * early).then(go);
          }
          if (r.status === 410 && r.body.error === "ended") {
            say("Sorry, this sale has ended.", "error");
            if (product) { product.state = "ended"; }
          } else if (r.status === 410) {
            say("Sorry, sold out — the last unit has gone.", "error");
            if (product) { product.state = "sold_out"; product.stock_left = 0; }
          } else if (r.status === 425) {
            say("The sale has not opened yet — wait for the countdown.", "error");
          } else if (r.status === 423) {
            say("Sales are paused for the moment. Press Buy again when they resume.", "error");
            if (product) { product.state = "paused"; }
          } else if (r.status === 429) {
            say("Too many attempts — please wait " + Math.max(1, r.retryAfter) + " s and try again.", "error");
          } else if (r.status === 401) {
            say("Please sign in first, then press Buy again.", "error");
          } else if (r.status === 422) {
            say(r.body.message || "That quantity is not possible.", "error");
          } else if (r.status === 503 || r.status === 0 || r.status === 502 || r.status === 504) {
            say("The shop is too busy right now. Please try again in a moment.", "error");
          } else {
            say("Your order could not be placed. Reload the page and try again.", "error");
          }
        });
      }
      busy = true;
      say("Placing your order…", "info");
      render();
      return go().then(function () { busy = false; render(); refresh(); });
    }

    $("buy-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      if (button.disabled) { return; }
      var qty = parseInt($("qty").value, 10);
      var max = parseInt($("qty").getAttribute("max"), 10) || 1;
      if (!(qty >= 1 && qty <= max)) { say("Choose a quantity from 1 to " + max + ".", "error"); $("qty").focus(); return; }
      buy(qty);
    });

    render();
    refresh();
    setInterval(render, 200);
    // Stock left every few seconds; rarely once the sale is over.
    every(3000, function () {
      var st = synced ? state() : null;
      if ((st === "ended" || st === "sold_out") && Math.random() > 0.1) { return; }
      return refresh();
    });
  }

  // ---- index page ----
  function indexPage(root) {
    function refresh() {
      return getJSON("/api/products").then(function (r) {
        if (r.status !== 200 || !Array.isArray(r.body)) { return; }
        r.body.forEach(function (p) {
          var li = root.querySelector('li[data-sku="' + CSS.escape(p.sku) + '"]');
          if (!li) { return; }
          li.querySelector('[data-live="state"]').textContent = STATE_TEXT[p.state] || p.state;
          li.querySelector('[data-live="stock"]').textContent = p.stock_left;
          li.setAttribute("data-state", p.state);
        });
      }).catch(function () {});
    }
    refresh();
    every(5000, refresh);
  }

  // ---- orders page ----
  function ordersPage() {
    var status = $("orders-status"), table = $("orders"), tbody = table.querySelector("tbody");
    var shown = "", names = {};
    // Product names for the list (one call; the sku stands in without it).
    var catalog = getJSON("/api/products").then(function (r) {
      if (r.status === 200 && Array.isArray(r.body)) {
        r.body.forEach(function (p) { names[p.sku] = p.name; });
      }
    }).catch(function () {});
    function row(o) {
      var tr = document.createElement("tr");
      var product = document.createElement("td");
      var a = document.createElement("a");
      a.href = "/p/" + encodeURIComponent(o.sku);
      a.textContent = names[o.sku] || o.sku;
      product.appendChild(a);
      tr.appendChild(product);
      [[String(o.qty), ""], [o.status, "st-" + o.status], [new Date(o.created_at).toLocaleString(), "placed"], [o.order_id, "id"]].forEach(function (c) {
        var td = document.createElement("td");
        td.textContent = c[0];
        if (c[1]) { td.className = c[1]; }
        tr.appendChild(td);
      });
      return tr;
    }
    function load() {
      return getJSON("/api/me/orders").then(function (r) {
        if (r.status === 401) { status.textContent = "Please sign in to see your orders."; return false; }
        if (r.status !== 200) { status.textContent = "Your orders could not be loaded. Retrying…"; return true; }
        var orders = r.body.orders || [];
        if (!orders.length) { status.textContent = "No orders yet."; return false; }
        var key = JSON.stringify(orders.map(function (o) { return [o.order_id, o.status]; }));
        if (key !== shown) {
          shown = key;
          tbody.textContent = "";
          orders.forEach(function (o) { tbody.appendChild(row(o)); });
          var queued = orders.filter(function (o) { return o.status === "queued"; }).length;
          status.textContent = orders.length + (orders.length === 1 ? " order" : " orders") +
            (queued ? ", " + queued + " waiting for confirmation." : ", all confirmed.");
          table.hidden = false;
        }
        return orders.some(function (o) { return o.status === "queued"; });
      }).catch(function () { status.textContent = "Your orders could not be loaded. Retrying…"; return true; });
    }
    function loop() {
      load().then(function (again) { if (again) { sleep(2000).then(loop); } });
    }
    catalog.then(loop);
  }

  function start() {
    localTimes();
    localPrices();
    var p = document.querySelector('[data-page="product"]');
    if (p) { productPage(p); }
    var i = document.querySelector('[data-page="index"]');
    if (i) { indexPage(i); }
    if (document.querySelector('[data-page="orders"]')) { ordersPage(); }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
