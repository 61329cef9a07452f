// k6: purchases in an open loop — RATE purchases per second whatever the
// answers take (executor `constant-arrival-rate`), each with the next token
// of the pool. The closed-loop scripts (purchase.js, mixed.js) wait for an
// answer before the next request, which hides queueing; here a slow answer
// holds its VU while the next iterations start on time on other VUs.
//
//   k6 run -e BASE=http://127.0.0.1:8080 -e SKU=some-sale -e TOKENS=tokens.txt \
//          -e RATE=3000 -e VUS=256 -e DURATION=10s -e SUMMARY=out.json loadtest/k6/openloop.js
//
// VUS (default 256, like loadgen -c) VUs are allocated before the start
// (preAllocatedVUs) and k6 may not add more (maxVUs = VUS): when every VU is
// waiting for an answer, an iteration due then is not started and counts in
// k6's `dropped_iterations` (in the summary). k6 starts iterations on an even
// schedule (not Poisson) and `http_req_duration` runs from the actual send,
// so its percentiles are the service time; the queueing shows as dropped
// iterations. loadgen --rate measures from the intended time (README.md).
import http from 'k6/http';
import {
  BASE, SKU, VUS, tokens, statusCounter, purchaseBody, purchaseParams, handleSummary,
} from './common.js';

export { handleSummary };

const RATE = Math.round(Number(__ENV.RATE || '0'));
if (!(RATE > 0)) throw new Error('set -e RATE=<purchases per second>');
const PRE_VUS = Number(__ENV.PRE_VUS || String(VUS));
const count = statusCounter([202, 401, 409, 410, 422, 425, 429, 503]);

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(99)', 'p(99.9)'],
  scenarios: {
    openloop: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION || '10s',
      preAllocatedVUs: Math.min(PRE_VUS, VUS),
      maxVUs: VUS,
      gracefulStop: '5s',
    },
  },
};

const url = `${BASE}/api/sales/${SKU}/purchase`;

export default function () {
  // VU v takes tokens v-1, v-1+VUS, …: distinct until the pool wraps.
  const t = tokens[((__VU - 1) + __ITER * VUS) % tokens.length];
  count(http.post(url, purchaseBody, purchaseParams(t)));
}
