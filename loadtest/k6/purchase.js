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
import { sleep } from 'k6';
import {
  BASE, SKU, VUS, tokens, statusCounter, closedLoop, purchaseBody, purchaseParams, handleSummary,
} from './common.js';

export { handleSummary };

const START_AT = Number(__ENV.START_AT || '0');
const count = statusCounter([202, 401, 409, 410, 422, 425, 429, 503]);

export const options = closedLoop('purchase');

const url = `${BASE}/api/sales/${SKU}/purchase`;

export default function () {
  if (START_AT > 0 && __ITER === 0) {
    const wait = (START_AT - Date.now()) / 1000;
    if (wait > 0) sleep(Math.min(wait, 60));
  }
  // VU v takes tokens v-1, v-1+VUS, v-1+2*VUS, …: distinct until the pool wraps.
  const t = tokens[((__VU - 1) + __ITER * VUS) % tokens.length];
  count(http.post(url, purchaseBody, purchaseParams(t)));
}
