-- The horizon of the current (transaction) snapshot: oldest transaction still running, first not yet started.
SELECT pg_catalog.pg_snapshot_xmin(s)::text::int8 AS xmin, pg_catalog.pg_snapshot_xmax(s)::text::int8 AS xmax
FROM pg_catalog.pg_current_snapshot() AS s
