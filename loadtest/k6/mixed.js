// k6: the "mixed" scenario — 90 % browse (product page and product JSON,
// half each), 10 % purchases, each purchase with a shopper token of the pool.
//
//   k6 run -e BASE=http://127.0.0.1:8080 -e SKU=some-sale -e TOKENS=tokens.txt \
//          -e VUS=256 -e DURATION=10s -e SUMMARY=out.json loadtest/k6/mixed.js
//
// TOKENS, VUS, DURATION, SUMMARY: see common.js. VUs loop without think time
// (closed loop, like oha -c). The summary (SUMMARY, JSON) carries http_reqs,
// http_req_duration percentiles and one counter per status.
import http from 'k6/http';
import {
  BASE, SKU, tokens, statusCounter, closedLoop, purchaseBody, purchaseParams, handleSummary,
} from './common.js';

export { handleSummary };

const BUY_SHARE = Number(__ENV.BUY_SHARE || '0.1');
const count = statusCounter([200, 202, 304, 401, 404, 409, 410, 422, 425, 429, 503]);

export const options = closedLoop('mixed');

const pageUrl = `${BASE}/p/${SKU}`;
const jsonUrl = `${BASE}/api/products/${SKU}`;
const buyUrl = `${BASE}/api/sales/${SKU}/purchase`;

export default function () {
  const r = Math.random();
  if (r < BUY_SHARE) {
    const t = tokens[(__VU * 7919 + __ITER) % tokens.length];
    count(http.post(buyUrl, purchaseBody, purchaseParams(t, { tags: { name: 'purchase' } })));
  } else if (r < BUY_SHARE + (1 - BUY_SHARE) / 2) {
    count(http.get(pageUrl, { tags: { name: 'product_page' } }));
  } else {
    count(http.get(jsonUrl, { tags: { name: 'product_json' } }));
  }
}
