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

  // `minor` units of `currency` in the shopper's locale; the plain
  // `299.00 EUR` where Intl cannot (null when the numbers make no sense).
  function fmtMoney(minor, currency, digits) {
    minor = Number(minor); digits = Number(digits);
    if (!isFinite(minor) || !(digits >= 0 && digits <= 4) || !currency) { return null; }
    var units = minor / Math.pow(10, digits);
    try {
      return new Intl.NumberFormat(locales(), {
        style: "currency", currency: currency,
        minimumFractionDigits: digits, maximumFractionDigits: digits
      }).format(units);
    } catch (e) {
      return units.toFixed(digits) + " " + currency;
    }
  }

  function localPrices() {
    document.querySelectorAll("data.money[data-currency]").forEach(function (d) {
      var text = fmtMoney(d.getAttribute("value"), d.getAttribute("data-currency"), d.getAttribute("data-minor-digits"));
      // (Without Intl this is the page's own plain price again.)
      if (text !== null) { d.textContent = text; }
    });
  }

  // A moment (an order's deadline, its payment) in the shopper's zone.
  var momentFmt;
  function fmtMoment(iso) {
    var d = new Date(iso);
    if (!iso || isNaN(d)) { return ""; }
    try {
      momentFmt = momentFmt || new Intl.DateTimeFormat(locales(), { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", second: "2-digit" });
      return momentFmt.format(d);
    } catch (e) { return d.toLocaleString(); }
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
          if (r.status === 200 && r.body.status === "confirmed" && r.body.pay_by) {
            say("Order confirmed. Please pay for it by " + fmtMoment(r.body.pay_by) + " on My orders.", "ok", orderId);
            return;
          }
          if (r.status === 200 && r.body.status === "confirmed") {
            say("Order confirmed. Thank you!", "ok", orderId);
            return;
          }
          if (r.status === 200 && r.body.status !== "queued") {
            say({ paid: "Order paid. Thank you!", expired: "This order expired: it was not paid in time.", cancelled: "This order is cancelled." }[r.body.status] || "Order " + r.body.status + ".", "info", orderId);
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
    // Stock left every few seconds; rarely once the sale is over. Sold out
    // is not always the end: units of orders that expire unpaid or are
    // cancelled go back on sale, so a sold-out page still looks now and then.
    every(3000, function () {
      var st = synced ? state() : null;
      if (st === "ended" && Math.random() > 0.1) { return; }
      if (st === "sold_out" && Math.random() > 0.34) { return; }
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
  // Each order's state in words; while it waits for its payment (`pay_by`)
  // the time left by the server's clock (learnt from the `server_time` of
  // each sale's product JSON, as the product page does), its amount in the
  // sale's currency, and Cancel (asked first, in a dialog). "Pay
  // (development)" only where the server says its development payment
  // exists (data-dev-pay, the same for every shopper). Rows are updated in
  // place, so focus stays where it is and nothing moves (every box has its
  // size in app.css); changes nobody asked for are announced in #announce,
  // the answers to the shopper's own actions in #orders-msg.
  function ordersPage(root) {
    var summary = $("orders-status"), table = $("orders"), tbody = table.querySelector("tbody");
    var msgBox = $("orders-msg"), msg = msgBox.querySelector(".msg");
    var dialog = $("cancel-dialog");
    var paymentStep = root.getAttribute("data-payment") === "on";
    var devPay = paymentStep && root.getAttribute("data-dev-pay") === "on";
    var products = {}, known = {}, rows = {}, order = [];
    var loaded = false, timer = null, inFlight = false, again = false, lastSync = 0, signedOut = false;

    function say(text, kind) {
      msg.textContent = text;
      msgBox.className = "status" + (kind ? " " + kind : "");
    }

    // A sale's product JSON, once (its name, currency and the server's clock).
    function product(sku) {
      if (!products[sku]) {
        products[sku] = getJSON("/api/products/" + encodeURIComponent(sku)).then(function (r) {
          if (r.status === 200) {
            learnTime(r.body.server_time, r.t0, r.t1);
            lastSync = Date.now();
            known[sku] = r.body;
          } else if (r.status !== 404) {
            delete products[sku];
          }
        }).catch(function () { delete products[sku]; });
      }
      return products[sku];
    }

    function waiting(o) { return !!o.pay_by && (o.status === "queued" || o.status === "confirmed"); }
    function left(o) { return Date.parse(o.pay_by) - now(); }
    function payable(o) { return waiting(o) && (!synced || left(o) > 0); }
    function name(o) { return known[o.sku] ? known[o.sku].name : o.sku; }
    function what(o) { return "your order of " + (o.qty > 1 ? o.qty + " × " : "") + name(o); }

    function word(o) {
      if (o.status === "queued") { return "Being confirmed"; }
      if (o.status === "confirmed") { return o.pay_by ? "Waiting for payment" : "Confirmed"; }
      return { paid: "Paid", expired: "Expired", cancelled: "Cancelled" }[o.status] || o.status;
    }

    function detail(o) {
      if (waiting(o)) {
        if (!synced) { return "Pay by " + fmtMoment(o.pay_by); }
        var ms = left(o);
        return ms > 0 ? "Pay within " + fmtDuration(ms) : "Payment time is up";
      }
      if (o.status === "queued") { return "Confirmed within seconds"; }
      if (o.status === "paid") { return fmtMoment(o.paid_at); }
      if (o.status === "expired") { return "Not paid in time"; }
      if (o.status === "cancelled") { return fmtMoment(o.cancelled_at); }
      return o.confirmed_at ? fmtMoment(o.confirmed_at) : "";
    }

    function amount(o) {
      var p = known[o.sku];
      if (o.amount_cents === undefined || o.amount_cents === null || !p) { return "—"; }
      return fmtMoney(o.amount_cents, p.currency, p.currency_minor_digits) || "—";
    }

    // Sets a text only when it changed (the countdown runs four times a second).
    function put(el, text) {
      text = text || "\u00a0";
      if (el.textContent !== text) { el.textContent = text; }
    }

    function cell(r, cls, label) {
      var td = document.createElement("td");
      td.className = cls;
      td.setAttribute("role", "cell");
      // The column's name where the table is shown as cards (narrow
      // screens); screen readers have the column header.
      var l = document.createElement("span");
      l.className = "label";
      l.setAttribute("aria-hidden", "true");
      l.textContent = label;
      td.appendChild(l);
      var v = document.createElement("span");
      v.className = "value";
      td.appendChild(v);
      r.tr.appendChild(td);
      return v;
    }

    function button(r, cls, text, onPress) {
      var b = document.createElement("button");
      b.type = "button";
      b.className = cls;
      b.hidden = true;
      b.textContent = text;
      b.addEventListener("click", function () {
        if (r.busy || b.getAttribute("aria-disabled") === "true") { return; }
        onPress(r, b);
      });
      r.actions.appendChild(b);
      return b;
    }

    function makeRow(id) {
      var r = { id: id, tr: document.createElement("tr"), order: null, busy: false, warned: false, timeUp: false };
      r.tr.setAttribute("role", "row");
      r.tr.id = "order-" + id;
      var productCell = cell(r, "item", "Product");
      r.link = document.createElement("a");
      productCell.appendChild(r.link);
      r.qty = cell(r, "qty", "Qty");
      r.amount = cell(r, "amount", "Amount");
      r.stateValue = cell(r, "state", "Status");
      r.stateCell = r.stateValue.parentNode;
      // Where focus goes when the button that had it goes away.
      r.stateCell.tabIndex = -1;
      r.word = document.createElement("span");
      r.word.className = "word";
      r.detail = document.createElement("span");
      r.detail.className = "detail";
      r.stateValue.appendChild(r.word);
      r.stateValue.appendChild(r.detail);
      r.placed = cell(r, "placed", "Placed");
      r.idCell = cell(r, "id", "Order number");
      // Pay and Cancel: only where orders wait for their payment.
      r.pay = r.cancel = null;
      if (paymentStep) {
        r.actions = cell(r, "actions", "Actions");
        r.actions.className = "value actions-inner";
        r.pay = devPay ? button(r, "pay", "Pay (development)", pay) : null;
        r.cancel = button(r, "cancel", "Cancel", askCancel);
      }
      return r;
    }

    function setActions(r) {
      var o = r.order, can = payable(o);
      [r.pay, r.cancel].forEach(function (b) {
        if (!b) { return; }
        if (!can && !b.hidden && document.activeElement === b) { r.stateCell.focus(); }
        b.hidden = !can;
        b.setAttribute("aria-disabled", r.busy ? "true" : "false");
        // Every row has these buttons: the name says which order (and
        // starts with the visible label).
        var label = (b === r.pay ? "Pay (development) for " : "Cancel ") + what(o);
        if (b.getAttribute("aria-label") !== label) { b.setAttribute("aria-label", label); }
      });
      r.tr.setAttribute("aria-busy", r.busy ? "true" : "false");
    }

    function tickRow(r) {
      var o = r.order;
      put(r.detail, detail(o));
      if (waiting(o) && synced) {
        var ms = left(o);
        // One spoken warning a minute before the deadline (if there was
        // more than a minute when the page learnt of the order).
        if (ms > 60000) { r.longer = true; }
        if (r.longer && !r.warned && ms <= 60000 && ms > 0) {
          r.warned = true;
          announce("One minute left to pay for " + what(o) + ".");
        }
        if (ms <= 0 && !r.timeUp) {
          // The order expires now (by the server's clock): hide its buttons
          // and look again soon for the worker's answer.
          r.timeUp = true;
          setActions(r);
          soon(700);
        }
      }
    }

    function changed(o) {
      if (o.status === "confirmed") {
        return "Your order of " + name(o) + " is confirmed" + (o.pay_by ? ": please pay for it before the time runs out." : ".");
      }
      return {
        paid: "Your order of " + name(o) + " is paid.",
        expired: "Your order of " + name(o) + " expired: it was not paid in time, and its units are back on sale.",
        cancelled: "Your order of " + name(o) + " is cancelled."
      }[o.status] || "";
    }

    // Shows `o` in its row; returns what a screen reader should hear of the
    // change (nothing on the first sight of an order, or when `quiet`).
    function show(r, o, quiet) {
      var before = r.order;
      r.order = o;
      r.link.href = "/p/" + encodeURIComponent(o.sku);
      put(r.link, name(o));
      put(r.qty, String(o.qty));
      put(r.amount, amount(o));
      r.stateCell.className = "state st-" + o.status + (waiting(o) ? " waiting" : "");
      r.tr.setAttribute("data-status", o.status);
      put(r.word, word(o));
      put(r.placed, fmtMoment(o.created_at));
      put(r.idCell, o.order_id);
      if (!waiting(o)) { r.timeUp = false; }
      tickRow(r);
      setActions(r);
      if (!before || quiet || before.status === o.status) { return ""; }
      return changed(o);
    }

    function summarize() {
      var all = order.map(function (id) { return rows[id].order; });
      if (!all.length) { put(summary, loaded ? "No orders yet." : "Loading your orders…"); return; }
      var toPay = all.filter(waiting).length;
      var queued = all.filter(function (o) { return o.status === "queued" && !o.pay_by; }).length;
      var parts = [];
      if (toPay) { parts.push(toPay + " waiting for payment"); }
      if (queued) { parts.push(queued + " being confirmed"); }
      var allConfirmed = all.every(function (o) { return o.status === "confirmed"; });
      put(summary, all.length + (all.length === 1 ? " order" : " orders") +
        (parts.length ? ", " + parts.join(", ") + "." : allConfirmed ? ", all confirmed." : ", none waiting for payment."));
    }

    function render(list) {
      var news = [], seen = {};
      list.forEach(function (o, i) {
        var r = rows[o.order_id], first = !r;
        if (first) { r = rows[o.order_id] = makeRow(o.order_id); }
        var said = show(r, o, first || !loaded);
        if (said) { news.push(said); }
        if (tbody.children[i] !== r.tr) { tbody.insertBefore(r.tr, tbody.children[i] || null); }
        seen[o.order_id] = true;
      });
      // An order gone from the list (its sale was purged).
      Object.keys(rows).forEach(function (id) {
        if (!seen[id]) {
          if (rows[id].tr.contains(document.activeElement)) { $("main").focus(); }
          rows[id].tr.remove();
          delete rows[id];
        }
      });
      order = list.map(function (o) { return o.order_id; });
      loaded = true;
      table.hidden = list.length === 0;
      summarize();
      if (news.length) { announce(news.join(" ")); }
    }

    function active() {
      return order.some(function (id) { var o = rows[id].order; return o.status === "queued" || waiting(o); });
    }

    function load() {
      return getJSON("/api/me/orders").then(function (r) {
        if (r.status === 401) {
          signedOut = true;
          put(summary, "Please sign in to see your orders.");
          return;
        }
        if (r.status !== 200) {
          put(summary, loaded ? "Your orders could not be updated. Retrying…" : "Your orders could not be loaded. Retrying…");
          return;
        }
        signedOut = false;
        var list = (r.body && r.body.orders) || [];
        // Each sale's product once; while an order waits for its payment,
        // one of its sales again every half minute (the clock, refined).
        if (Date.now() - lastSync > 30000) {
          var w = list.filter(waiting)[0];
          if (w && known[w.sku]) { delete products[w.sku]; }
        }
        return Promise.all(list.map(function (o) { return product(o.sku); })).then(function () { render(list); });
      }).catch(function () {
        put(summary, loaded ? "Your orders could not be updated. Retrying…" : "Your orders could not be loaded. Retrying…");
      });
    }

    // Every 2 s while an order is being confirmed or waits for its payment,
    // every 30 s otherwise (± 20 %, five times slower in a hidden tab).
    function poll() {
      if (inFlight) { again = true; return; }
      inFlight = true;
      clearTimeout(timer);
      load().then(function () {
        inFlight = false;
        if (again) { again = false; return poll(); }
        var base = signedOut ? 30000 : active() ? 2000 : (loaded ? 30000 : 5000);
        timer = setTimeout(poll, base * (0.8 + Math.random() * 0.4) * (document.hidden ? 5 : 1));
      });
    }
    function soon(ms) {
      clearTimeout(timer);
      timer = setTimeout(poll, ms);
    }

    function postJSON(url) {
      return fetch(url, { method: "POST", credentials: "same-origin", cache: "no-store", headers: { "Accept": "application/json" } })
        .then(function (r) {
          return r.json().catch(function () { return {}; }).then(function (body) {
            return { status: r.status, body: body, retryAfter: Number(r.headers.get("Retry-After")) || 0 };
          });
        }).catch(function () { return { status: 0, body: {}, retryAfter: 0 }; });
    }

    // Words for a refusal of `action` ("pay" or "cancel") of row `r`; a 409
    // looks at the order again first, to say what happened to it.
    function refused(r, res, action) {
      var o = r.order;
      if (res.status === 409) {
        return getJSON("/api/orders/" + encodeURIComponent(r.id)).then(function (g) {
          if (g.status === 200) { o = g.body; show(r, o, true); summarize(); }
          var code = res.body && res.body.error;
          if (code === "already_paid" || o.status === "paid") {
            return action === "pay" ? "Your order of " + name(o) + " is already paid." : "Your order of " + name(o) + " is already paid, so it can no longer be cancelled.";
          }
          if (o.status === "expired") {
            return (action === "pay" ? "Too late to pay: " : "Too late to cancel: ") + what(o) + " expired when its payment time ran out. Its units are back on sale" + (action === "pay" ? "; nothing was taken." : ".");
          }
          if (o.status === "cancelled") {
            return "Too late to pay: " + what(o) + " was cancelled; nothing was taken.";
          }
          return action === "pay" ? "This order cannot be paid now." : "This order can no longer be cancelled.";
        }).catch(function () { return "This order's state changed; the list shows it in a moment."; });
      }
      var text;
      if (res.status === 401) { text = "Please sign in again, then try once more."; }
      else if (res.status === 404) { text = "This order was not found (are you signed in as its shopper?)."; }
      else if (res.status === 403) { text = "The shop refused this request from this page."; }
      else if (res.status === 429) { text = "Too many attempts — please wait " + Math.max(1, res.retryAfter) + " s and try again."; }
      else if (res.status === 422) { text = (res.body && res.body.message) || "The shop refused this request."; }
      else if (res.status === 0 || res.status >= 500) { text = "The shop is busy right now — please try again in a moment."; }
      else { text = "That did not work. Reload the page and try again."; }
      return Promise.resolve(text);
    }

    function act(r, action, url, busyText, doneText) {
      r.busy = true;
      setActions(r);
      say(busyText, "info");
      return postJSON(url).then(function (res) {
        if (res.status === 200 && res.body && res.body.order_id) {
          show(r, res.body, true);
          summarize();
          say(doneText(res.body), "ok");
          return;
        }
        return refused(r, res, action).then(function (text) { say(text, "error"); });
      }).then(function () {
        r.busy = false;
        setActions(r);
        soon(300);
      });
    }

    function pay(r) {
      var o = r.order;
      act(r, "pay", "/dev/pay/" + encodeURIComponent(r.id), "Paying for " + what(o) + "…",
        function (p) { return "Paid: " + what(p) + " (" + amount(p) + "). Thank you!"; });
    }

    function cancel(r) {
      var o = r.order;
      act(r, "cancel", "/api/orders/" + encodeURIComponent(r.id) + "/cancel", "Cancelling " + what(o) + "…",
        function (c) { return "Cancelled: " + what(c) + ". Its units are back on sale."; });
    }

    // Cancel asks first, in a modal dialog (focus moves into it, starting
    // on "Keep the order"; Escape keeps it; focus comes back on close).
    var asking = null;
    function askCancel(r, opener) {
      var o = r.order;
      if (!dialog || typeof dialog.showModal !== "function") {
        if (window.confirm("Cancel " + what(o) + "? Its units go back on sale.")) { cancel(r); }
        return;
      }
      asking = { r: r, opener: opener };
      $("cancel-desc").textContent = "Cancel " + what(o) + " (" + amount(o) + ")? Its units go back on sale for other shoppers; this cannot be undone.";
      dialog.returnValue = "";
      dialog.showModal();
      $("cancel-keep").focus();
    }
    if (dialog) {
      $("cancel-keep").addEventListener("click", function () { dialog.close("keep"); });
      $("cancel-yes").addEventListener("click", function () { dialog.close("cancel"); });
      dialog.addEventListener("close", function () {
        // The event is queued: a quick Escape then Enter opens the question
        // again before the first close is told. That stale event must not
        // take the new question's order (its "Cancel the order" would then
        // do nothing).
        if (dialog.open) { return; }
        var a = asking;
        asking = null;
        if (!a) { return; }
        if (!a.opener.hidden && document.body.contains(a.opener)) { a.opener.focus(); } else { a.r.stateCell.focus(); }
        if (dialog.returnValue === "cancel") { cancel(a.r); }
      });
    }

    setInterval(function () { order.forEach(function (id) { tickRow(rows[id]); }); }, 250);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) { poll(); } });
    poll();
  }

  function start() {
    localTimes();
    localPrices();
    var p = document.querySelector('[data-page="product"]');
    if (p) { productPage(p); }
    var i = document.querySelector('[data-page="index"]');
    if (i) { indexPage(i); }
    var o = document.querySelector('[data-page="orders"]');
    if (o) { ordersPage(o); }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
