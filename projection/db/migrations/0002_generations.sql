-- Generations (seed "Generation Types"), their predictions, the AGENTIC shots with every
-- attempt and its evaluation, and refines of a prediction's output.
CREATE TABLE generations (
    generation_id     uuid PRIMARY KEY,
    strategy          text NOT NULL,
    generation_type   text NOT NULL CHECK (generation_type IN ('BASE', 'AGENTIC')),
    batch_size        integer NOT NULL CHECK (batch_size >= 1),
    settings          jsonb NOT NULL DEFAULT '{}'::jsonb,
    status            text NOT NULL DEFAULT 'PENDING',
    origin_tenant_id  text,
    webhook_url       text,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);
CREATE INDEX generations_tenant_created_idx ON generations (origin_tenant_id, created_at DESC);

CREATE TABLE predictions (
    generation_id     uuid NOT NULL REFERENCES generations (generation_id) ON DELETE CASCADE,
    prediction_index  integer NOT NULL CHECK (prediction_index >= 0),
    task_id           uuid,
    shot_id           text,
    status            text NOT NULL DEFAULT 'PENDING',
    result            jsonb,
    PRIMARY KEY (generation_id, prediction_index)
);

CREATE TABLE orchestrated_shots (
    shot_id               text PRIMARY KEY,
    generation_id         uuid NOT NULL,
    prediction_index      integer NOT NULL,
    max_attempts          integer NOT NULL DEFAULT 3,
    min_confidence_score  double precision NOT NULL DEFAULT 0.7,
    evaluation_provider   text NOT NULL DEFAULT 'auto',
    accepted_task_id      uuid,
    accepted_attempt      integer,
    decision              text,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL
);
CREATE INDEX orchestrated_shots_generation_idx ON orchestrated_shots (generation_id);

CREATE TABLE shot_attempts (
    shot_id       text NOT NULL REFERENCES orchestrated_shots (shot_id) ON DELETE CASCADE,
    attempt       integer NOT NULL CHECK (attempt >= 1),
    task_id       uuid NOT NULL,
    score         double precision CHECK (score BETWEEN 0 AND 1),
    reasons       jsonb NOT NULL DEFAULT '[]'::jsonb,
    decision      text,
    evaluator     text,
    evaluated_at  timestamptz,
    PRIMARY KEY (shot_id, attempt)
);

CREATE TABLE refines (
    refine_id       uuid PRIMARY KEY,
    generation_id   uuid,
    source_task_id  uuid,
    task_id         uuid NOT NULL,
    params          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL
);
CREATE INDEX refines_source_idx ON refines (source_task_id);
