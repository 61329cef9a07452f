// The live sale view (/admin/live) in headless Chromium, through nginx.
//
// Driven by tests/it/live.rs, which starts a Redis group of its own, two
// `flashsale serve` instances, a worker and nginx, and talks to this script
// with one JSON object per line:
//
//   test -> script  {"token", "sku"}                 the admin token, the sale
//   script -> test  {"event":"ready", "master"}      signed in, the sale shown
//   test -> script  {"event":"load-started"}
//   script -> test  {"event":"selling", "rate", "stock_left"}   purchases/s > 0 seen
//   test -> script  {"event":"failed-over", "master"}
//   script -> test  {"event":"switch-seen", "master", "switches"}
//   test -> script  {"event":"load-stopped", "stock_left"}      the audit's number
//   script -> test  {"event":"done", "result"}       then exit 0 (1 on any failure)
//
// Environment: E2E_BASE (nginx), E2E_ARTIFACTS (screenshots), CHROMIUM.

import fs from "node:fs";
import path from "node:path";
import { check, collectErrors, launch, log, must, noHorizontalScroll, recv, send } from "./lib.mjs";

const BASE = must("E2E_BASE");
const OUT = must("E2E_ARTIFACTS");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

async function shot(page, name) {
  const file = path.join(OUT, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log("screenshot", file);
}

// The numbers the page shows now (from the data-value of each tile).
async function numbers(page, sku) {
  return page.evaluate((sku) => {
    const v = (id) => {
      const el = document.getElementById(id);
      const d = el ? el.getAttribute("data-value") : "";
      return d === "" || d === null ? null : Number(d);
    };
    const row = document.querySelector(`#live-sales tr[data-sku="${sku}"]`);
    const cell = row ? row.querySelector("td[data-value]") : null;
    return {
      stock_left: v("live-stock-left"),
      rate: v("live-rate"),
      n503: v("live-503"),
      switches: v("live-switches"),
      master: document.getElementById("live-master").textContent,
      queued: v("live-queued"),
      lag: v("live-lag"),
      dead: v("live-dead"),
      row_stock_left: cell ? Number(cell.getAttribute("data-value")) : null,
      points: Number(document.getElementById("live-chart").getAttribute("data-points")),
      marks: Number(document.getElementById("live-chart").getAttribute("data-marks") || "0"),
      stock_line: document.getElementById("live-line-stock").getAttribute("points"),
      msg: document.querySelector("#live-msg .msg").textContent,
    };
  }, sku);
}

let maxRate = 0;
// Polls the page's numbers until `ok(n)` holds; notes the highest rate seen.
async function until(page, sku, what, ok, timeout = 30000) {
  const deadline = Date.now() + timeout;
  let n = null;
  while (Date.now() < deadline) {
    n = await numbers(page, sku);
    if (n.rate !== null) { maxRate = Math.max(maxRate, n.rate); }
    if (ok(n)) { return n; }
    await page.waitForTimeout(200);
  }
  throw new Error(`${what}: not within ${timeout} ms; the page shows ${JSON.stringify(n)}`);
}

async function signIn(page, token) {
  await page.goto(`${BASE}/admin/live`);
  const field = page.getByLabel("Admin token");
  await field.waitFor({ state: "visible" });
  await field.fill(token);
  await page.getByRole("button", { name: "Show the sales" }).click();
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const { token, sku } = await recv();
  const browser = await launch(CHROMIUM);
  const errors = [];
  const result = { browser: browser.version() };
  try {
    const desk = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: "en-US" });
    desk.setDefaultTimeout(15000);
    const page = await desk.newPage();
    collectErrors(page, "desktop", errors);
    const requests = [];
    page.on("request", (r) => requests.push(r.url()));

    // A wrong token first: refused, the form is back with a message.
    await signIn(page, "not-the-admin-token");
    await page.waitForFunction(() => document.querySelector("#live-msg .msg").textContent.includes("refused"));
    check(await page.getByLabel("Admin token").isVisible(), "the token form is back after a refusal");
    check(await page.evaluate(() => sessionStorage.getItem("flashsale.admin_token")) === null, "a refused token is not kept");
    await shot(page, "token-desktop");

    await page.getByLabel("Admin token").fill(token);
    await page.getByRole("button", { name: "Show the sales" }).click();
    let n = await until(page, sku, "the sale on the page", (n) => n.row_stock_left !== null && n.master.includes(":"));
    check(!(await page.getByLabel("Admin token").isVisible()), "the token form is gone once the sales are shown");
    check(await page.evaluate(() => sessionStorage.getItem("flashsale.admin_token")) !== null, "the token is kept in this tab");
    check(!page.url().includes(token) && requests.every((u) => !u.includes(token)), "the token is never in an address");
    send({ event: "ready", master: n.master });

    check((await recv()).event === "load-started", "load-started");
    n = await until(page, sku, "purchases per second above 0", (n) => n.rate > 0 && n.stock_left < 100000, 45000);
    const stockDuring = n.stock_left;
    await shot(page, "selling-desktop");
    send({ event: "selling", rate: n.rate, stock_left: n.stock_left });

    const failed = await recv();
    check(failed.event === "failed-over", "failed-over");
    n = await until(page, sku, `the new master ${failed.master} and a switch`, (n) => n.master === failed.master && n.switches >= 1, 45000);
    await shot(page, "switched-desktop");
    send({ event: "switch-seen", master: n.master, switches: n.switches });

    const stopped = await recv();
    check(stopped.event === "load-stopped", "load-stopped");
    n = await until(page, sku, `stock left ${stopped.stock_left} (the audit's)`, (n) => n.stock_left === stopped.stock_left && n.row_stock_left === stopped.stock_left, 30000);
    check(n.stock_left < stockDuring, `stock left went down: ${stockDuring} then ${n.stock_left}`);
    check(n.points >= 5 && n.stock_line.split(" ").length === n.points, `the chart has its points: ${n.points}`);
    check(n.marks >= 1, `the chart marks the master switch: ${n.marks}`);
    // Everything the page loaded came from this site.
    check(requests.every((u) => u.startsWith(BASE)), `only local requests: ${requests.filter((u) => !u.startsWith(BASE))}`);
    await shot(page, "final-desktop");
    Object.assign(result, { stock_left: n.stock_left, points: n.points, marks: n.marks, switches: n.switches, n503: n.n503, master: n.master });

    // A phone: a new tab asks for the token again; nothing scrolls sideways
    // but the tables' own boxes.
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, locale: "en-GB" });
    phone.setDefaultTimeout(15000);
    const small = await phone.newPage();
    collectErrors(small, "phone", errors);
    await signIn(small, token);
    await until(small, sku, "the sale on the phone", (n) => n.stock_left === stopped.stock_left, 30000);
    check(!(await small.getByLabel("Admin token").isVisible()), "phone: the token form is gone once the sales are shown");
    await noHorizontalScroll(small, "phone");
    await shot(small, "final-phone");

    check(errors.length === 0, `no script errors: ${errors.join(" | ")}`);
    result.max_rate = maxRate;
    send({ event: "done", result });
  } finally {
    await browser.close();
  }
}

main().then(() => process.exit(0), (e) => {
  log("FAILED", e && e.stack ? e.stack : String(e));
  process.exit(1);
});
