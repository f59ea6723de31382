-- The catalog the generation layer draws LoRA adapters from. IF NOT EXISTS: databases set up
-- before migrations owned these tables (producers/catalog.py created them) keep their rows.
CREATE TABLE IF NOT EXISTS subjects (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    lora_ref        text,
    default_weight  double precision,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS products (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    lora_ref        text,
    default_weight  double precision,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS styles (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    lora_ref        text,
    default_weight  double precision,
    created_at      timestamptz NOT NULL DEFAULT now()
);
