// What the k6 scripts share: the target, the shopper-token pool, one
// counter per response status, closed-loop options and the JSON summary.
import { SharedArray } from 'k6/data';
import { Counter } from 'k6/metrics';

export const BASE = __ENV.BASE || 'http://127.0.0.1:8080';
export const SKU = __ENV.SKU;
if (!SKU) throw new Error('set -e SKU=<sale sku>');
export const VUS = Number(__ENV.VUS || '256');

// TOKENS: one JWT per line (`flashsale token --users N --prefix u --out FILE`),
// shared by every VU (SharedArray: one copy in memory).
export const tokens = new SharedArray('tokens', () =>
  open(__ENV.TOKENS || 'tokens.txt').split('\n').map((l) => l.trim()).filter((l) => l.length > 0));

// A function counting each response in `status_<code>` (or `status_other`).
export function statusCounter(statuses) {
  const byStatus = {};
  for (const s of statuses) byStatus[s] = new Counter(`status_${s}`);
  const other = new Counter('status_other');
  return (res) => {
    const c = byStatus[res.status];
    if (c) c.add(1);
    else other.add(1);
  };
}

// VUS virtual users looping without think time (closed loop, like oha -c).
export function closedLoop(name) {
  return {
    discardResponseBodies: true,
    summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(99)', 'p(99.9)'],
    scenarios: {
      [name]: {
        executor: 'constant-vus',
        vus: VUS,
        duration: __ENV.DURATION || '10s',
        gracefulStop: '5s',
      },
    },
  };
}

export const purchaseBody = JSON.stringify({ qty: 1 });

export function purchaseParams(token, extra) {
  return Object.assign({
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
  }, extra || {});
}

// SUMMARY: where to write k6's end-of-test summary as JSON.
export function handleSummary(data) {
  const out = {};
  if (__ENV.SUMMARY) out[__ENV.SUMMARY] = JSON.stringify(data, null, 2);
  return out;
}
