-- The task read model: one row per task, folded from the status topic (state/lifecycle.py) and
-- the task topics (parameters, origin, webhook). Written only by the projector.
CREATE TABLE tasks (
    task_id             uuid PRIMARY KEY,
    task_type           text NOT NULL,
    status              text NOT NULL
        CHECK (status IN ('PENDING', 'QUEUED', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    attempt             integer NOT NULL CHECK (attempt >= 1),
    progress            double precision NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 1),
    message             text,
    params              jsonb,
    result              jsonb,
    error_code          text,
    error_message       text,
    origin_instance     text,
    origin_zone         text,
    origin_tenant_id    text,
    provider_type       text,
    webhook_url         text,
    idempotency_key     text,
    generation_id       uuid,
    orchestration       jsonb,
    created_at          timestamptz NOT NULL,
    queued_at           timestamptz,
    started_at          timestamptz,
    completed_at        timestamptz,
    -- Processing time: PROCESSING -> terminal of the attempt the row shows.
    duration_ms         bigint GENERATED ALWAYS AS
        ((EXTRACT(EPOCH FROM (completed_at - started_at)) * 1000)::bigint) STORED,
    -- occurred_at of the status event the row reflects (lifecycle.TaskState.updated_at).
    updated_at          timestamptz NOT NULL,
    last_event_id       uuid,
    -- Changes applied by the fold; 0 while only the task-submitted event has been seen.
    version             bigint NOT NULL DEFAULT 0,
    -- Highest task_events.seq of this task.
    event_seq           bigint NOT NULL DEFAULT 0,
    -- The task-submitted event the parameters come from (highest attempt, then the earliest).
    submitted_event_id  uuid,
    submitted_attempt   integer,
    submitted_at        timestamptz
);

CREATE INDEX tasks_created_at_idx ON tasks (created_at DESC, task_id);
CREATE INDEX tasks_tenant_created_idx ON tasks (origin_tenant_id, created_at DESC);
CREATE INDEX tasks_status_idx ON tasks (status);
CREATE INDEX tasks_task_type_idx ON tasks (task_type);
CREATE INDEX tasks_generation_idx ON tasks (generation_id) WHERE generation_id IS NOT NULL;
CREATE INDEX tasks_id_prefix_idx ON tasks ((task_id::text) text_pattern_ops);

-- Every distinct status event of every task: the history the SSE stream serves.
CREATE TABLE task_events (
    event_id     uuid PRIMARY KEY,
    task_id      uuid NOT NULL,
    -- 1, 2, 3 ... per task in the order the projector first saw the events (SSE ids).
    seq          bigint NOT NULL,
    attempt      integer NOT NULL,
    status       text NOT NULL,
    progress     double precision,
    occurred_at  timestamptz NOT NULL,
    payload      jsonb NOT NULL,
    UNIQUE (task_id, seq)
);
