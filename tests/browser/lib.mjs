// What the browser tests (e2e.mjs, payment.mjs) share: the line protocol
// with tests/it/browser.rs (one JSON object per line on stdin/stdout; logs
// on stderr), checks, Chromium's launch, the init script that records
// layout shifts, signing in on the development page.

import { chromium } from "playwright-core";
import path from "node:path";
import readline from "node:readline";

const NAME = path.basename(process.argv[1] || "browser", ".mjs");

export function must(name) {
  const v = process.env[name];
  if (!v) { throw new Error(`${name} is not set`); }
  return v;
}

let input = null;
export async function recv() {
  input = input || readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const { value, done } = await input.next();
  if (done) { throw new Error("the test closed our stdin"); }
  return JSON.parse(value);
}
export function send(obj) { process.stdout.write(JSON.stringify(obj) + "\n"); }
export function log(...args) { process.stderr.write(`[${NAME} ${new Date().toISOString()}] ${args.join(" ")}\n`); }
export function check(cond, what) { if (!cond) { throw new Error(`check failed: ${what}`); } }

// Playwright gives every launch() a fresh --user-data-dir of its own (a new
// temp dir, removed on close); each shopper is a separate context (own
// cookies and storage).
export function launch(executablePath) {
  return chromium.launch({
    executablePath,
    headless: true,
    timeout: 60000,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

// Init script: every layout shift not caused by input, in window.__cls (the
// sum) and window.__shifts (each with the nodes that moved).
export const LAYOUT_SHIFTS = `
  window.__cls = 0; window.__shifts = [];
  try {
    new PerformanceObserver(function (list) {
      list.getEntries().forEach(function (e) {
        if (!e.hadRecentInput) {
          window.__cls += e.value;
          window.__shifts.push({ value: e.value, t: e.startTime, nodes: (e.sources || []).map(function (s) { return s.node ? (s.node.id || s.node.className || s.node.nodeName) : "?"; }) });
        }
      });
    }).observe({ type: "layout-shift", buffered: true });
  } catch (e) {}
`;

export async function noHorizontalScroll(page, what) {
  const w = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, inner: window.innerWidth }));
  check(w.scroll <= w.inner, `${what}: no horizontal scrolling at ${w.inner}px (content ${w.scroll}px)`);
}

// Signs `name` in on /dev/login with the mouse, or from the keyboard
// (`keyboard`: the first Tab must reach a visible skip link; `typed` runs
// once the name is typed, before Enter).
export async function signIn(page, base, name, { keyboard = false, typed = null } = {}) {
  await page.goto(`${base}/dev/login`);
  if (keyboard) {
    await page.keyboard.press("Tab");
    const skip = await page.evaluate(() => {
      const a = document.activeElement;
      return { text: a.textContent, outline: getComputedStyle(a).outlineStyle, top: a.getBoundingClientRect().top };
    });
    check(skip.text === "Skip to content" && skip.top >= 0, `first Tab reaches a visible skip link: ${JSON.stringify(skip)}`);
    await page.getByLabel("Shopper name").focus();
    await page.keyboard.type(name);
    if (typed) { await typed(); }
    await page.keyboard.press("Enter");
  } else {
    await page.getByLabel("Shopper name").fill(name);
    await page.getByRole("button", { name: "Sign in" }).click();
  }
  await page.waitForURL(`${base}/`);
  const cookies = await page.context().cookies(base);
  check(cookies.some((c) => c.name === "fs_token" && c.httpOnly), `fs_token cookie set for ${name}`);
}

// Console errors and page errors of `page` into `into`, as `who: text`.
// Chromium logs every non-2xx fetch ("Failed to load resource"): the
// answers the tests provoke (410, 409, 503) are not script errors.
export function collectErrors(page, who, into) {
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) { into.push(`${who}: ${m.text()}`); }
  });
  page.on("pageerror", (e) => into.push(`${who}: ${e.message}`));
}
