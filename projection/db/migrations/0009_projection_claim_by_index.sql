-- projection_claim (0008) checks each remembered row by its primary key. Its check joined the
-- batch's ids to tasks; PL/pgSQL keeps the plan it makes after a few calls, and one made while
-- the table is still small (a fresh database) scans the whole table, which it then goes on doing
-- for every batch as the table grows, until an ANALYZE happens to replace it. A lookup per id
-- (a correlated subquery) is an index scan whatever the table's size was when it was planned.
CREATE OR REPLACE FUNCTION projection_claim(task_ids text[], lock_seed bigint, seen_xmins text[])
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    stale integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(x, lock_seed))
        FROM (SELECT unnest(task_ids) AS x ORDER BY 1) AS ids;
    IF seen_xmins IS NOT NULL THEN
        SELECT count(*) INTO stale
            FROM unnest(task_ids, seen_xmins) AS seen(task_id, seen_xmin)
            WHERE (SELECT tasks.xmin::text FROM tasks WHERE tasks.task_id = seen.task_id::uuid)
                IS DISTINCT FROM seen.seen_xmin;
        IF stale > 0 THEN
            RAISE EXCEPTION 'projection_claim: % of % task rows changed since this projector wrote them',
                stale, cardinality(task_ids) USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    RETURN (txid_current() % 4294967296)::text;
END $$;
