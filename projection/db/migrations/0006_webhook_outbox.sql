-- Webhook deliveries still to make (and made): the outbox. The projector inserts one row per
-- (task, status event) in the same transaction as the projection batch that produced the status
-- change, so a crash can neither lose nor invent a delivery; delivery threads (of any projector
-- process) claim due rows with SELECT ... FOR UPDATE SKIP LOCKED, POST, record the attempt in
-- webhook_deliveries and reschedule (exponential backoff) or mark the row final.
CREATE TABLE webhook_outbox (
    outbox_id         bigserial PRIMARY KEY,  -- also the order of one task's deliveries
    task_id           uuid NOT NULL,
    event_id          uuid NOT NULL,          -- the status event (X-Compute-Event-Id)
    url               text NOT NULL,          -- resolved when queued: the task's own, or its origin's
    body              bytea NOT NULL,         -- the exact JSON bytes that are signed and POSTed
    state             text NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_status_code  integer,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (task_id, event_id)
);
-- The claim query reads the pending rows by due time, and checks a task's earlier pending rows.
CREATE INDEX webhook_outbox_due_idx ON webhook_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_outbox_task_idx ON webhook_outbox (task_id, outbox_id) WHERE state = 'pending';
