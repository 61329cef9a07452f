// flashsale page script: fills the live parts of the cached pages (stock
// left, state, countdown synchronised to the server clock, the Buy button,
// order status). No framework, no third-party code.
(function () {
  "use strict";

  var skew = 0; // server time minus local time, in ms

  function $(id) { return document.getElementById(id); }
  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }
  function now() { return Date.now() + skew; }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (body) {
          return { status: r.status, body: body, headers: r.headers };
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

  var STATE_TEXT = { upcoming: "Opens soon", live: "On sale now", sold_out: "Sold out", ended: "Ended" };

  function localTimes() {
    document.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) { t.textContent = d.toLocaleString(); }
    });
  }

  // ---- product page ----
  function productPage(root) {
    var sku = root.getAttribute("data-sku");
    var starts = Date.parse(root.getAttribute("data-starts"));
    var ends = Date.parse(root.getAttribute("data-ends"));
    var button = $("buy"), status = $("status"), stock = $("stock-left"), countdown = $("countdown");
    var product = null, busy = false, done = false;

    function say(text, kind) {
      status.textContent = text;
      status.className = "status" + (kind ? " " + kind : "");
    }

    function render() {
      var t = now();
      var state = product ? product.state : null;
      if (product) { stock.textContent = product.stock_left; }
      if (t < starts) {
        countdown.textContent = "Opens in " + fmtDuration(starts - t);
      } else if (t < ends && state !== "sold_out") {
        countdown.textContent = "On sale now — closes in " + fmtDuration(ends - t);
      } else if (state === "sold_out") {
        countdown.textContent = "Sold out";
      } else {
        countdown.textContent = "This sale has ended";
      }
      var open = t >= starts && t < ends && state !== "sold_out" && state !== "ended";
      button.disabled = busy || done || !open;
    }

    function refresh() {
      return getJSON("/api/products/" + encodeURIComponent(sku)).then(function (r) {
        if (r.status === 200) {
          product = r.body;
          var st = Date.parse(r.body.server_time);
          if (!isNaN(st)) { skew = st - Date.now(); }
        }
        render();
      }).catch(function () { render(); });
    }

    function follow(orderId) {
      var tries = 0;
      function poll() {
        return getJSON("/api/orders/" + encodeURIComponent(orderId)).then(function (r) {
          if (r.status === 200 && r.body.status === "confirmed") {
            say("Order " + orderId + ": confirmed. Thank you!", "ok");
            return;
          }
          if (r.status === 200) { say("Order " + orderId + ": " + r.body.status + " — confirming…", "ok"); }
          tries += 1;
          if (tries < 120) { return sleep(1000).then(poll); }
        }).catch(function () { if (tries < 120) { tries += 1; return sleep(2000).then(poll); } });
      }
      return poll();
    }

    function buy(qty) {
      var key = newKey(), attempt = 0;
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
            say("Order " + r.body.order_id + ": queued — confirming…", "ok");
            return follow(r.body.order_id);
          }
          if (r.status === 409) {
            done = true;
            say("You already bought this sale's limit (order " + r.body.order_id + ").", "info");
            return follow(r.body.order_id);
          }
          if ((r.status === 503 || r.status === 0 || r.status === 502 || r.status === 504) && attempt < 6) {
            attempt += 1;
            var wait = Math.max(r.retryAfter * 1000, 300 * Math.pow(2, attempt)) + Math.random() * 200;
            say("The shop is busy — retrying your order (attempt " + (attempt + 1) + ")…", "info");
            return sleep(wait).then(go);
          }
          if (r.status === 410 && r.body.error === "ended") { say("Sorry, this sale has ended.", "error"); }
          else if (r.status === 410) { say("Sorry, sold out.", "error"); if (product) { product.state = "sold_out"; product.stock_left = 0; } }
          else if (r.status === 425) { say("The sale has not started yet — wait for the countdown.", "error"); }
          else if (r.status === 429) { say("Too many attempts. Try again in " + Math.max(1, r.retryAfter) + " s.", "error"); }
          else if (r.status === 401) { say("Please sign in first.", "error"); }
          else if (r.status === 422) { say(r.body.message || "That quantity is not possible.", "error"); }
          else { say("Your order could not be placed. Please try again.", "error"); }
        });
      }
      busy = true;
      render();
      return go().then(function () { busy = false; render(); refresh(); });
    }

    $("buy-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      if (button.disabled) { return; }
      var qty = parseInt($("qty").value, 10);
      if (!(qty >= 1)) { say("Choose a quantity of at least 1.", "error"); return; }
      buy(qty);
    });

    refresh();
    setInterval(render, 250);
    setInterval(refresh, 3000);
  }

  // ---- index page ----
  function indexPage(root) {
    function refresh() {
      getJSON("/api/products").then(function (r) {
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
    setInterval(refresh, 5000);
  }

  // ---- orders page ----
  function ordersPage() {
    var status = $("orders-status"), table = $("orders");
    getJSON("/api/me/orders").then(function (r) {
      if (r.status === 401) { status.textContent = "Please sign in to see your orders."; return; }
      if (r.status !== 200) { status.textContent = "Your orders could not be loaded. Please reload."; return; }
      var orders = r.body.orders || [];
      if (!orders.length) { status.textContent = "No orders yet."; return; }
      var tbody = table.querySelector("tbody");
      orders.forEach(function (o) {
        var tr = document.createElement("tr");
        [o.order_id, o.sku, String(o.qty), o.status, new Date(o.created_at).toLocaleString()].forEach(function (text) {
          var td = document.createElement("td");
          td.textContent = text;
          tr.appendChild(td);
        });
        tbody.appendChild(tr);
      });
      status.textContent = orders.length + " order(s).";
      table.hidden = false;
    }).catch(function () { status.textContent = "Your orders could not be loaded. Please reload."; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes();
    var p = document.querySelector('[data-page="product"]');
    if (p) { productPage(p); }
    var i = document.querySelector('[data-page="index"]');
    if (i) { indexPage(i); }
    if (document.querySelector('[data-page="orders"]')) { ordersPage(); }
  });
})();
