-- The catalog the generation layer draws LoRA adapters from (generations/catalog.py reads and
-- writes it; this migration is the one place its tables are defined).
CREATE TABLE IF NOT EXISTS subjects (
    id              uuid PRIMARY KEY,
    name            text NOT NULL CHECK (btrim(name) <> ''),
    lora_ref        text CHECK (btrim(lora_ref) <> ''),
    default_weight  double precision CHECK (default_weight >= 0 AND default_weight <= 1),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS products (
    id              uuid PRIMARY KEY,
    name            text NOT NULL CHECK (btrim(name) <> ''),
    lora_ref        text CHECK (btrim(lora_ref) <> ''),
    default_weight  double precision CHECK (default_weight >= 0 AND default_weight <= 1),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS styles (
    id              uuid PRIMARY KEY,
    name            text NOT NULL CHECK (btrim(name) <> ''),
    lora_ref        text CHECK (btrim(lora_ref) <> ''),
    default_weight  double precision CHECK (default_weight >= 0 AND default_weight <= 1),
    created_at      timestamptz NOT NULL DEFAULT now()
);
