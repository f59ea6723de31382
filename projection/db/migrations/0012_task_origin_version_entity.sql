-- Issue 17: the envelope's origin_version (the submitting system's version) and entity_id (the
-- caller's business entity the task is about), from the task-submitted event (else the first
-- status event that carries them), for the API and the webhooks. Existing rows keep null: their
-- events carried neither.
ALTER TABLE tasks ADD COLUMN origin_version text;
ALTER TABLE tasks ADD COLUMN entity_id text;
-- A caller looks its tasks up by its own entity.
CREATE INDEX tasks_tenant_entity_idx ON tasks (origin_tenant_id, entity_id) WHERE entity_id IS NOT NULL;
