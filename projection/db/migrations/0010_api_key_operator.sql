-- Operator keys may also read what spans every tenant: /metrics and the fleet-wide monitoring
-- routes (docs/SECURITY.md "Operators and what the API exposes"). Existing keys stay tenant keys.
ALTER TABLE api_keys ADD COLUMN operator boolean NOT NULL DEFAULT false;
