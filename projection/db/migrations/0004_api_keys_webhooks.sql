-- API keys: only a salted SHA-256 of the secret is stored; the key id is public (it is the
-- middle part of the key) and finds the row.
CREATE TABLE api_keys (
    key_id       text PRIMARY KEY,
    tenant_id    text NOT NULL,
    name         text,
    salt         bytea NOT NULL,
    key_hash     bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked      boolean NOT NULL DEFAULT false,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

-- Every webhook delivery attempt, successful or not.
CREATE TABLE webhook_deliveries (
    delivery_id   bigserial PRIMARY KEY,
    task_id       uuid NOT NULL,
    event_id      uuid,
    url           text NOT NULL,
    attempt       integer NOT NULL CHECK (attempt >= 1),
    status_code   integer,
    error         text,
    delivered_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_task_idx ON webhook_deliveries (task_id, delivered_at);
