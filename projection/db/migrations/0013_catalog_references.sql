-- Reference images of a catalog entry (issue 18): views of a subject or product that an EDITING
-- SUBJECT_SWAP / PRODUCT_ENHANCEMENT uses (through the workers' IP-Adapter) when the request brings
-- none of its own. URLs the workers fetch under their input rules; at most 8 (generations/catalog.py).
ALTER TABLE subjects ADD COLUMN IF NOT EXISTS reference_urls text[] NOT NULL DEFAULT '{}';
ALTER TABLE products ADD COLUMN IF NOT EXISTS reference_urls text[] NOT NULL DEFAULT '{}';
ALTER TABLE styles ADD COLUMN IF NOT EXISTS reference_urls text[] NOT NULL DEFAULT '{}';
