// k6: the "mixed" scenario — 90 % browse (product page and product JSON,
// half each), 10 % purchases, each purchase with a shopper token of the pool.
//
//   k6 run -e BASE=http://127.0.0.1:8080 -e SKU=some-sale -e TOKENS=tokens.txt \
//          -e VUS=256 -e DURATION=10s -e SUMMARY=out.json loadtest/k6/mixed.js
//
// TOKENS: one JWT per line (`flashsale token --users N --prefix u --out FILE`),
// shared by every VU (SharedArray: one copy in memory). VUs loop without
// think time (closed loop, like oha -c). The summary (SUMMARY, JSON) carries
// http_reqs, http_req_duration percentiles and one counter per status.
import http from 'k6/http';
import { SharedArray } from 'k6/data';
import { Counter } from 'k6/metrics';

const BASE = __ENV.BASE || 'http://127.0.0.1:8080';
const SKU = __ENV.SKU;
if (!SKU) throw new Error('set -e SKU=<sale sku>');
const BUY_SHARE = Number(__ENV.BUY_SHARE || '0.1');

const tokens = new SharedArray('tokens', () =>
  open(__ENV.TOKENS || 'tokens.txt').split('\n').map((l) => l.trim()).filter((l) => l.length > 0));

const STATUSES = [200, 202, 304, 401, 404, 409, 410, 422, 425, 429, 503];
const byStatus = {};
for (const s of STATUSES) byStatus[s] = new Counter(`status_${s}`);
const otherStatus = new Counter('status_other');

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(99)', 'p(99.9)'],
  scenarios: {
    mixed: {
      executor: 'constant-vus',
      vus: Number(__ENV.VUS || '256'),
      duration: __ENV.DURATION || '10s',
      gracefulStop: '5s',
    },
  },
};

const pageUrl = `${BASE}/p/${SKU}`;
const jsonUrl = `${BASE}/api/products/${SKU}`;
const buyUrl = `${BASE}/api/sales/${SKU}/purchase`;
const body = JSON.stringify({ qty: 1 });

function count(res) {
  const c = byStatus[res.status];
  if (c) c.add(1);
  else otherStatus.add(1);
}

export default function () {
  const r = Math.random();
  if (r < BUY_SHARE) {
    const t = tokens[(__VU * 7919 + __ITER) % tokens.length];
    count(http.post(buyUrl, body, {
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${t}` },
      tags: { name: 'purchase' },
    }));
  } else if (r < BUY_SHARE + (1 - BUY_SHARE) / 2) {
    count(http.get(pageUrl, { tags: { name: 'product_page' } }));
  } else {
    count(http.get(jsonUrl, { tags: { name: 'product_json' } }));
  }
}

export function handleSummary(data) {
  const out = {};
  if (__ENV.SUMMARY) out[__ENV.SUMMARY] = JSON.stringify(data, null, 2);
  return out;
}
