-- Webhooks of generations as well as of tasks: the outbox and the delivery log name a subject,
-- (subject_kind, subject_id), instead of a task. Existing rows are tasks' deliveries.
-- Uniqueness (a replayed batch queues nothing twice) and per-subject order (a row is claimable
-- only while no earlier pending row of its subject exists) are on that pair.
ALTER TABLE webhook_outbox RENAME COLUMN task_id TO subject_id;
ALTER TABLE webhook_outbox
    ADD COLUMN subject_kind text NOT NULL DEFAULT 'task'
        CHECK (subject_kind IN ('task', 'generation'));
ALTER TABLE webhook_outbox ALTER COLUMN subject_kind DROP DEFAULT;  -- writers name the kind
ALTER TABLE webhook_outbox DROP CONSTRAINT IF EXISTS webhook_outbox_task_id_event_id_key;
ALTER TABLE webhook_outbox
    ADD CONSTRAINT webhook_outbox_subject_event_key UNIQUE (subject_kind, subject_id, event_id);
DROP INDEX IF EXISTS webhook_outbox_task_idx;
CREATE INDEX webhook_outbox_subject_idx ON webhook_outbox (subject_kind, subject_id, outbox_id)
    WHERE state = 'pending';

ALTER TABLE webhook_deliveries RENAME COLUMN task_id TO subject_id;
ALTER TABLE webhook_deliveries
    ADD COLUMN subject_kind text NOT NULL DEFAULT 'task'
        CHECK (subject_kind IN ('task', 'generation'));
ALTER TABLE webhook_deliveries ALTER COLUMN subject_kind DROP DEFAULT;
DROP INDEX IF EXISTS webhook_deliveries_task_idx;
CREATE INDEX webhook_deliveries_subject_idx
    ON webhook_deliveries (subject_kind, subject_id, delivered_at);
