-- Workflows (DAGs of tasks, issue 18), projected from the compacted workflows-state topic: one
-- WorkflowState document per workflow (workflows/record.py), the whole document each time, with a
-- version that grows by one per change. Like generations: a row is replaced only by a higher
-- version, and the workflow's steps are deleted and re-inserted from the winning document.
CREATE TABLE workflows (
    workflow_id              uuid PRIMARY KEY,
    name                     text NOT NULL,
    description              text,
    status                   text NOT NULL,
    origin_tenant_id         text,
    origin_instance          text,
    origin_zone              text,
    webhook_url              text,
    suppress_subtask_events  boolean NOT NULL DEFAULT false,
    config                   jsonb NOT NULL DEFAULT '{}'::jsonb,
    message                  text,
    created_at               timestamptz NOT NULL,
    updated_at               timestamptz NOT NULL,
    started_at               timestamptz,
    completed_at             timestamptz,
    version                  bigint NOT NULL DEFAULT 0
);
CREATE INDEX workflows_tenant_created_idx ON workflows (origin_tenant_id, created_at DESC);
CREATE INDEX workflows_status_idx ON workflows (status);

-- One row per step, in the order the workflow lists them (position). The step's definition
-- (task_type, config, depends_on, input_mappings) and where it stands (status, task_id,
-- attempt, the parameters it was submitted with once its inputs were mapped, result, error).
CREATE TABLE workflow_steps (
    workflow_id     uuid NOT NULL REFERENCES workflows (workflow_id) ON DELETE CASCADE,
    step_id         text NOT NULL,
    position        integer NOT NULL CHECK (position >= 0),
    task_type       text NOT NULL,
    config          jsonb NOT NULL DEFAULT '{}'::jsonb,
    depends_on      jsonb NOT NULL DEFAULT '[]'::jsonb,
    input_mappings  jsonb NOT NULL DEFAULT '[]'::jsonb,
    status          text NOT NULL,
    task_id         uuid,
    attempt         integer NOT NULL DEFAULT 0,
    params          jsonb,
    result          jsonb,
    error_code      text,
    error_message   text,
    started_at      timestamptz,
    completed_at    timestamptz,
    PRIMARY KEY (workflow_id, step_id)
);
CREATE INDEX workflow_steps_task_idx ON workflow_steps (task_id);

-- Webhooks of workflows too: a third kind of subject in the outbox and the delivery log.
ALTER TABLE webhook_outbox DROP CONSTRAINT webhook_outbox_subject_kind_check;
ALTER TABLE webhook_outbox ADD CONSTRAINT webhook_outbox_subject_kind_check
    CHECK (subject_kind IN ('task', 'generation', 'workflow'));
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_subject_kind_check;
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_subject_kind_check
    CHECK (subject_kind IN ('task', 'generation', 'workflow'));
