// The shopper's side of the payment step in headless Chromium, through
// nginx: the orders page's countdown, "Pay (development)", Cancel with its
// confirmation, and an order left to expire.
//
// Driven by tests/it/browser.rs, which starts two `flashsale serve` with a
// payment window of a few seconds and `--dev-login`, a worker (it confirms
// and expires orders) and nginx, and talks to this script with one JSON
// object per line:
//
//   script -> test  {"event":"ready"}                  three shoppers signed in
//   test -> script  {"sku", "name", "stock", "window_s"}  the sale is open
//   script -> test  {"event":"done", "result"}         then exit 0 (1 on any failure)
//
// Environment: E2E_BASE (nginx), E2E_ARTIFACTS (screenshots), CHROMIUM.
//
// Lea (desktop, German) buys first and leaves the order unpaid on her
// orders page: it must turn to expired there by itself. Pat (desktop, local
// clock 10 minutes fast) buys and pays with the development button while the
// countdown, by the *server's* clock, runs. Cam (phone, keyboard only) buys
// the last unit, cancels (after once keeping the order in the dialog), and
// sees the unit back on the product page.

import fs from "node:fs";
import path from "node:path";
import { check, collectErrors, launch, LAYOUT_SHIFTS, log, must, noHorizontalScroll, recv, send, signIn } from "./lib.mjs";

const BASE = must("E2E_BASE");
const OUT = must("E2E_ARTIFACTS");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const CLOCK_AHEAD_MS = 10 * 60 * 1000;

async function shot(page, name) {
  const file = path.join(OUT, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log("screenshot", file);
}

// The row of `orderId` on an orders page, as the shopper sees it.
async function row(page, orderId) {
  return page.evaluate((id) => {
    const tr = document.getElementById("order-" + id);
    if (!tr) { return null; }
    const v = (cls) => { const e = tr.querySelector(`td.${cls} .value`); return e ? e.textContent.trim() : null; };
    const buttons = [...tr.querySelectorAll("button")].filter((b) => !b.hidden).map((b) => b.textContent.trim());
    return {
      status: tr.getAttribute("data-status"),
      word: tr.querySelector("td.state .word").textContent,
      detail: tr.querySelector("td.state .detail").textContent,
      amount: v("amount"),
      product: v("item"),
      buttons,
      height: tr.getBoundingClientRect().height,
    };
  }, orderId);
}

async function waitRow(page, orderId, fn, what, timeout = 15000) {
  const deadline = Date.now() + timeout;
  let last = null;
  while (Date.now() < deadline) {
    last = await row(page, orderId);
    if (last && fn(last)) { return last; }
    await page.waitForTimeout(50);
  }
  throw new Error(`check failed: ${what}: the row is ${JSON.stringify(last)}`);
}

// Seconds left in "Pay within 00:00:07".
function secondsLeft(detail) {
  const m = /^Pay within (\d\d):(\d\d):(\d\d)$/.exec(detail);
  return m ? Number(m[1]) * 3600 + Number(m[2]) * 60 + Number(m[3]) : null;
}

// Buys one unit on the product page (the keyboard or the mouse) and returns
// the order id once the worker confirmed it.
async function buy(page, cfg, { keyboard = false } = {}) {
  await page.goto(`${BASE}/p/${cfg.sku}`);
  await page.waitForFunction(() => !document.getElementById("buy").disabled, null, { timeout: 15000, polling: 50 });
  if (keyboard) {
    await page.getByLabel("Quantity").focus();
    await page.keyboard.press("Tab");
    check(await page.evaluate(() => document.activeElement.id) === "buy", "Tab from the quantity reaches Buy");
    await page.keyboard.press("Enter");
  } else {
    await page.getByRole("button", { name: "Buy now" }).click();
  }
  await page.locator("#status-msg", { hasText: /^Order confirmed\. Please pay for it by .+ on My orders\.$/ }).waitFor({ timeout: 20000 });
  const line = (await page.locator("#status-order").textContent()).trim();
  check(/^Order number .+\.[0-9a-f]{32}$/.test(line), `order number shown: ${line}`);
  return line.replace("Order number ", "");
}

async function stockLeft(page) {
  return page.evaluate(() => document.getElementById("stock-left").textContent.trim());
}

// The product page until it shows `n` units left (a reload each try: the
// catalog is read from replicas behind a short cache).
async function waitStock(page, cfg, n, what) {
  const deadline = Date.now() + 10000;
  let seen = null;
  while (Date.now() < deadline) {
    await page.goto(`${BASE}/p/${cfg.sku}`);
    await page.waitForFunction(() => document.getElementById("stock-left").textContent.trim() !== "–", null, { timeout: 10000, polling: 50 });
    seen = await stockLeft(page);
    if (seen === String(n)) { return; }
    await page.waitForTimeout(200);
  }
  throw new Error(`check failed: ${what}: the product page shows ${seen} left, not ${n}`);
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const browser = await launch(CHROMIUM);
  const result = { browser: browser.version() };
  const pages = {};
  try {
    const desktop = { viewport: { width: 1280, height: 860 }, timezoneId: "Europe/Berlin" };
    const ctxLea = await browser.newContext({ ...desktop, locale: "de-DE" });
    const ctxPat = await browser.newContext({ ...desktop, locale: "en-US" });
    const ctxCam = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, locale: "en-GB", timezoneId: "America/New_York" });
    for (const c of [ctxLea, ctxPat, ctxCam]) { await c.addInitScript(LAYOUT_SHIFTS); c.setDefaultTimeout(15000); }
    // Pat's computer clock is 10 minutes fast: a countdown by it would say
    // the payment time is up at once.
    await ctxPat.clock.setSystemTime(Date.now() + CLOCK_AHEAD_MS);
    const lea = pages.lea = await ctxLea.newPage();
    const pat = pages.pat = await ctxPat.newPage();
    const cam = pages.cam = await ctxCam.newPage();
    const errors = [];
    for (const [who, p] of Object.entries(pages)) { collectErrors(p, who, errors); }
    await signIn(lea, BASE, "lea");
    await signIn(pat, BASE, "pat");
    await signIn(cam, BASE, "cam", { keyboard: true });
    send({ event: "ready" });

    const cfg = await recv();
    log("sale", JSON.stringify(cfg));
    const windowS = cfg.window_s;

    // ---- Lea buys and leaves her order unpaid on her orders page ----
    const leaOrder = await buy(lea, cfg);
    const leaBought = Date.now();
    await lea.getByRole("link", { name: "My orders" }).click();
    await lea.waitForURL(`${BASE}/orders`);
    const leaWaiting = await waitRow(lea, leaOrder, (r) => r.word === "Waiting for payment" && secondsLeft(r.detail) !== null, "Lea's order waits for its payment");
    check(/^129,00\s€$/.test(leaWaiting.amount), `the amount in German: ${leaWaiting.amount}`);
    check(leaWaiting.product === cfg.name, `the product's name: ${leaWaiting.product}`);
    check(JSON.stringify(leaWaiting.buttons) === JSON.stringify(["Pay (development)", "Cancel"]), `Pay (development) and Cancel offered: ${leaWaiting.buttons}`);
    check(await lea.getByRole("button", { name: `Cancel your order of ${cfg.name}`, exact: true }).count() === 1, "Cancel says which order it cancels");
    // From here on nothing Lea does moves anything: every later shift is the
    // page's own.
    await lea.evaluate(() => { window.__cls = 0; window.__shifts = []; });

    // ---- Pat buys, sees the countdown by the server's clock, pays ----
    const patOrder = await buy(pat, cfg);
    const patBought = Date.now();
    await pat.waitForFunction((n) => document.getElementById("stock-left").textContent.trim() === n, String(cfg.stock - 2), { timeout: 10000, polling: 50 });
    await pat.getByRole("link", { name: "My orders" }).click();
    await pat.waitForURL(`${BASE}/orders`);
    const patWaiting = await waitRow(pat, patOrder, (r) => secondsLeft(r.detail) !== null, "Pat's countdown");
    const left = secondsLeft(patWaiting.detail);
    const elapsed = (Date.now() - patBought) / 1000;
    check(left > 0 && left <= windowS && left >= windowS - elapsed - 3, `${left} s left to pay ${elapsed.toFixed(1)} s after the purchase (window ${windowS} s), by the server's clock although Pat's is 10 min fast`);
    check(patWaiting.word === "Waiting for payment" && /^€129\.00$/.test(patWaiting.amount), `Pat's row: ${JSON.stringify(patWaiting)}`);
    const ticked = await waitRow(pat, patOrder, (r) => { const s = secondsLeft(r.detail); return s !== null && s < left; }, "the countdown runs", 3000);
    result.countdown = [patWaiting.detail, ticked.detail];
    check(ticked.height === patWaiting.height, `the row keeps its height while counting down (${patWaiting.height} → ${ticked.height})`);
    await shot(pat, "orders-waiting-desktop");
    await pat.getByRole("button", { name: `Pay (development) for your order of ${cfg.name}`, exact: true }).click();
    const paid = await waitRow(pat, patOrder, (r) => r.status === "paid", "Pat's order is paid");
    check(paid.word === "Paid" && paid.buttons.length === 0 && paid.detail.trim() !== "", `paid: ${JSON.stringify(paid)}`);
    check(paid.height === patWaiting.height, `the row keeps its height when paid (${patWaiting.height} → ${paid.height})`);
    const patMsg = (await pat.locator("#orders-msg").textContent()).trim();
    check(patMsg === `Paid: your order of ${cfg.name} (€129.00). Thank you!`, `Pat is told: ${patMsg}`);
    check(await pat.evaluate(() => document.activeElement.closest("td") !== null && document.activeElement.closest("td").classList.contains("state")), "focus moves to the order's status when its buttons go");
    result.paid_after_ms = Date.now() - patBought;
    await shot(pat, "orders-paid-desktop");

    // ---- Cam buys the last unit from the keyboard, then cancels ----
    const camOrder = await buy(cam, cfg, { keyboard: true });
    await cam.waitForFunction(() => document.getElementById("countdown").getAttribute("data-state") === "sold_out", null, { timeout: 10000, polling: 50 });
    check(await stockLeft(cam) === "0", "Cam took the last unit");
    await shot(cam, "product-soldout-phone");
    await cam.goto(`${BASE}/orders`);
    await waitRow(cam, camOrder, (r) => r.word === "Waiting for payment" && r.buttons.length === 2, "Cam's order waits for its payment");
    await noHorizontalScroll(cam, "orders page");
    // Keyboard: from Pay to Cancel, Enter opens the question.
    await cam.getByRole("button", { name: `Pay (development) for your order of ${cfg.name}`, exact: true }).focus();
    await cam.keyboard.press("Tab");
    check(await cam.evaluate(() => document.activeElement.classList.contains("cancel")), "Tab from Pay reaches Cancel");
    await cam.keyboard.press("Enter");
    const dialog = cam.getByRole("dialog", { name: "Cancel this order?" });
    await dialog.waitFor();
    const asked = await cam.evaluate(() => ({
      focus: document.activeElement.id,
      modal: document.getElementById("cancel-dialog").matches(":modal"),
      text: document.getElementById("cancel-desc").textContent,
    }));
    check(asked.modal && asked.focus === "cancel-keep", `a modal question, focus on "Keep the order": ${JSON.stringify(asked)}`);
    check(asked.text.includes(cfg.name) && /€129\.00/.test(asked.text), `the question names the order: ${asked.text}`);
    await shot(cam, "orders-confirm-phone");
    // Escape keeps the order and gives focus back to Cancel.
    await cam.keyboard.press("Escape");
    await dialog.waitFor({ state: "hidden" });
    check(await cam.evaluate(() => document.activeElement.classList.contains("cancel")), "focus back on Cancel after Escape");
    check((await row(cam, camOrder)).status === "confirmed", "Escape kept the order");
    // Again, and this time "Cancel the order".
    await cam.keyboard.press("Enter");
    await dialog.waitFor();
    await cam.keyboard.press("Tab");
    check(await cam.evaluate(() => document.activeElement.id) === "cancel-yes", "Tab reaches \"Cancel the order\"");
    await cam.keyboard.press("Enter");
    const cancelled = await waitRow(cam, camOrder, (r) => r.status === "cancelled", "Cam's order is cancelled");
    check(cancelled.word === "Cancelled" && cancelled.buttons.length === 0, `cancelled: ${JSON.stringify(cancelled)}`);
    const camMsg = (await cam.locator("#orders-msg").textContent()).trim();
    check(camMsg === `Cancelled: your order of ${cfg.name}. Its units are back on sale.`, `Cam is told: ${camMsg}`);
    await shot(cam, "orders-cancelled-phone");
    // The unit is back: the product page shows it, and sells again.
    await waitStock(cam, cfg, 1, "the cancelled unit is back");
    await cam.waitForFunction(() => document.getElementById("countdown").getAttribute("data-state") === "live", null, { timeout: 10000, polling: 50 });
    await shot(cam, "product-back-phone");

    // ---- Lea's page: her order expires by itself ----
    const expired = await waitRow(lea, leaOrder, (r) => r.status === "expired", "Lea's order expires", (windowS + 15) * 1000);
    result.expired_after_ms = Date.now() - leaBought;
    check(result.expired_after_ms >= windowS * 1000 - 1000, `expired ${result.expired_after_ms} ms after the purchase, window ${windowS} s`);
    check(expired.word === "Expired" && expired.detail === "Not paid in time" && expired.buttons.length === 0, `expired: ${JSON.stringify(expired)}`);
    check(expired.height === leaWaiting.height, `the row keeps its height when it expires (${leaWaiting.height} → ${expired.height})`);
    const heard = await lea.evaluate(() => document.getElementById("announce").textContent);
    check(/expired: it was not paid in time/.test(heard), `the expiry is announced: ${heard}`);
    const leaShift = await lea.evaluate(() => ({ cls: window.__cls, shifts: window.__shifts }));
    result.cls_orders_desktop = leaShift.cls;
    check(leaShift.cls < 0.001, `no layout shift while the order counted down and expired: ${JSON.stringify(leaShift)}`);
    await shot(lea, "orders-expired-desktop");
    await waitStock(lea, cfg, 2, "the expired unit is back too");

    check(errors.length === 0, `no console errors: ${errors.join(" | ")}`);
    result.orders = { paid: patOrder, cancelled: camOrder, expired: leaOrder };
    send({ event: "done", result });
  } catch (e) {
    for (const k of Object.keys(pages)) {
      try {
        await pages[k].screenshot({ path: path.join(OUT, `failure-${k}.png`), fullPage: true });
        log("failure screenshot", path.join(OUT, `failure-${k}.png`));
      } catch (_) { /* the page is gone */ }
    }
    throw e;
  } finally {
    await browser.close();
  }
}

main().then(() => process.exit(0), (e) => {
  log("FAILED:", e && e.stack ? e.stack : String(e));
  process.exit(1);
});
