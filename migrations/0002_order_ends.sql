-- The payment step's ends (paid, expired, cancelled; library version 12):
-- an order ends at most once, and its status says which end it reached,
-- with that end's time. The worker moves a row only from `queued` or
-- `confirmed`, so a paid order is never expired nor an ended one reopened;
-- these constraints make the database refuse such a row whatever writes it.
ALTER TABLE orders
    ADD CONSTRAINT orders_one_end
        CHECK (num_nonnulls(paid_at, expired_at, cancelled_at) <= 1),
    ADD CONSTRAINT orders_end_matches_status
        CHECK ((status = 'paid') = (paid_at IS NOT NULL)
           AND (status = 'expired') = (expired_at IS NOT NULL)
           AND (status = 'cancelled') = (cancelled_at IS NOT NULL)),
    ADD CONSTRAINT orders_paid_by_a_payment
        CHECK (status <> 'paid' OR payment_id IS NOT NULL);
