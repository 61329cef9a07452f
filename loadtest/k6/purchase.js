// k6: purchases with a pool of shopper tokens — the "live sale" (huge stock)
// or the "stampede" (small stock, many shoppers) from k6. `loadtest/run.sh`
// measures these with its own generator (loadgen, more precise on a 2-core
// box); this script is the k6 recipe for shops that point k6 at flashsale.
//
//   k6 run -e BASE=http://127.0.0.1:8080 -e SKU=some-sale -e TOKENS=tokens.txt \
//          -e VUS=256 -e DURATION=10s -e SUMMARY=out.json loadtest/k6/purchase.js
//
// Each request takes the next token of the pool (per VU stride), so shoppers
// do not repeat until the pool is used up. START_AT (Unix ms) makes every VU
// wait for the second the sale opens.
import http from 'k6/http';
import { SharedArray } from 'k6/data';
import { Counter } from 'k6/metrics';
import { sleep } from 'k6';

const BASE = __ENV.BASE || 'http://127.0.0.1:8080';
const SKU = __ENV.SKU;
if (!SKU) throw new Error('set -e SKU=<sale sku>');
const START_AT = Number(__ENV.START_AT || '0');
const VUS = Number(__ENV.VUS || '256');

const tokens = new SharedArray('tokens', () =>
  open(__ENV.TOKENS || 'tokens.txt').split('\n').map((l) => l.trim()).filter((l) => l.length > 0));

const STATUSES = [202, 401, 409, 410, 422, 425, 429, 503];
const byStatus = {};
for (const s of STATUSES) byStatus[s] = new Counter(`status_${s}`);
const otherStatus = new Counter('status_other');

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(99)', 'p(99.9)'],
  scenarios: {
    purchase: {
      executor: 'constant-vus',
      vus: VUS,
      duration: __ENV.DURATION || '10s',
      gracefulStop: '5s',
    },
  },
};

const url = `${BASE}/api/sales/${SKU}/purchase`;
const body = JSON.stringify({ qty: 1 });

export default function () {
  if (START_AT > 0 && __ITER === 0) {
    const wait = (START_AT - Date.now()) / 1000;
    if (wait > 0) sleep(Math.min(wait, 60));
  }
  // VU v takes tokens v-1, v-1+VUS, v-1+2*VUS, …: distinct until the pool wraps.
  const t = tokens[((__VU - 1) + __ITER * VUS) % tokens.length];
  const res = http.post(url, body, {
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${t}` },
  });
  const c = byStatus[res.status];
  if (c) c.add(1);
  else otherStatus.add(1);
}

export function handleSummary(data) {
  const out = {};
  if (__ENV.SUMMARY) out[__ENV.SUMMARY] = JSON.stringify(data, null, 2);
  return out;
}
