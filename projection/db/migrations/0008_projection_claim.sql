-- The first statement of every batch the projector writes (projection/db/projection.py): take the
-- batch's per-task advisory locks in sorted order (two projectors never deadlock), then, when
-- the projector skipped reading the rows because it remembers them (projection/db/task_row_cache.py),
-- check that each row is still the version it remembers: its xmin, the transaction that wrote
-- it. A row someone else changed since raises serialization_failure, which aborts the batch's
-- transaction; the projector forgets what it remembered and writes the batch again after
-- reading the rows. Returns the id of this transaction (the xmin the batch's writes will have).
-- Each statement of a volatile PL/pgSQL function takes a new snapshot: the check sees every
-- transaction that committed before the locks were granted.
CREATE FUNCTION projection_claim(task_ids text[], lock_seed bigint, seen_xmins text[])
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    stale integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(x, lock_seed))
        FROM (SELECT unnest(task_ids) AS x ORDER BY 1) AS ids;
    IF seen_xmins IS NOT NULL THEN
        SELECT count(*) INTO stale
            FROM unnest(task_ids, seen_xmins) AS seen(task_id, seen_xmin)
            LEFT JOIN tasks ON tasks.task_id = seen.task_id::uuid
            WHERE tasks.xmin::text IS DISTINCT FROM seen.seen_xmin;
        IF stale > 0 THEN
            RAISE EXCEPTION 'projection_claim: % of % task rows changed since this projector wrote them',
                stale, cardinality(task_ids) USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    RETURN (txid_current() % 4294967296)::text;
END $$;
