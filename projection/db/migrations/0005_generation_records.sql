-- The generation read model, projected from the compacted generations-state topic (one
-- GenerationRecord document per generation, generations/flow.py): the columns the
-- record has beyond 0002, the version guard, and the API's idempotency ledger of generations.
ALTER TABLE generations
    ADD COLUMN version          bigint NOT NULL DEFAULT 0,
    ADD COLUMN completed_at     timestamptz,
    ADD COLUMN prompt           text,
    ADD COLUMN prompt_task_id   uuid,
    ADD COLUMN message          text,
    ADD COLUMN origin_instance  text,
    ADD COLUMN origin_zone      text;

ALTER TABLE predictions
    ADD COLUMN task_ids           jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN follow_up_task_id  uuid,
    ADD COLUMN error_code         text,
    ADD COLUMN error_message      text;

ALTER TABLE orchestrated_shots
    ADD COLUMN done  boolean NOT NULL DEFAULT false;

ALTER TABLE shot_attempts
    ADD COLUMN task_type   text,
    ADD COLUMN params      jsonb,
    ADD COLUMN status      text NOT NULL DEFAULT 'PENDING',
    ADD COLUMN error_code  text,
    ADD COLUMN result      jsonb;
CREATE INDEX shot_attempts_task_idx ON shot_attempts (task_id);

-- A REFINE generation has one task per variation: task_id is the first, task_ids all of them.
ALTER TABLE refines
    ALTER COLUMN task_id DROP NOT NULL,
    ADD COLUMN task_ids  jsonb NOT NULL DEFAULT '[]'::jsonb;
CREATE INDEX refines_generation_idx ON refines (generation_id);

-- Written by the API when it accepts a generation with an Idempotency-Key (not a projection:
-- `computectl db rebuild` leaves it alone). The same key of the same tenant names the same
-- generation; the fingerprint tells a repeat from a different request under a reused key.
CREATE TABLE generation_requests (
    origin_tenant_id  text NOT NULL,
    idempotency_key   text NOT NULL,
    generation_id     uuid NOT NULL UNIQUE,
    fingerprint       text NOT NULL,
    accepted          jsonb NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (origin_tenant_id, idempotency_key)
);
