-- The order ledger: every confirmed order, exactly once (order_id is the
-- key, and the worker's write is INSERT … ON CONFLICT (order_id) DO NOTHING).
-- The payment columns are empty until the payment step fills them.
CREATE TABLE orders (
    order_id     text PRIMARY KEY,
    sku          text NOT NULL,
    user_id      text NOT NULL,
    qty          integer NOT NULL CHECK (qty > 0),
    -- What the ledger knows of the order. The worker writes `confirmed`
    -- (an order is confirmed once it is here); `queued` is allowed for a
    -- later import of orders not confirmed yet; the payment step moves an
    -- order on to `paid`, `expired` or `cancelled`.
    status       text NOT NULL DEFAULT 'confirmed'
                 CHECK (status IN ('queued', 'confirmed', 'paid', 'expired', 'cancelled')),
    -- When the purchase Function made the order (Redis' clock).
    created_at   timestamptz NOT NULL,
    -- When the ledger accepted it (PostgreSQL's clock).
    confirmed_at timestamptz,
    pay_by       timestamptz,
    paid_at      timestamptz,
    payment_id   text UNIQUE,
    amount_cents bigint,
    expired_at   timestamptz,
    cancelled_at timestamptz
);

-- A sale's orders in purchase order (the export reads them so).
CREATE INDEX orders_sku_created_at ON orders (sku, created_at);
