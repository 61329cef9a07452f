-- A payment id names one payment at its provider, and the payment callback
-- pays an order only with the order's own amount. The ledger used to make
-- payment_id UNIQUE; a provider that reused an id for a second order (a
-- provider's bug, or two providers) then made the worker's write fail for
-- good, and the worker retries a failed write as an outage: it would hold
-- that batch for ever and confirm nothing more. The ledger records what
-- Redis decided; duplicates are found by the reconciliation
-- (`flashsale audit`), not by stopping the worker. Kept: an index, for
-- looking orders up by payment.
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_payment_id_key;
CREATE INDEX IF NOT EXISTS orders_payment_id ON orders (payment_id) WHERE payment_id IS NOT NULL;
