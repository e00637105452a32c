-- Record one table's copy (same transaction as its rows): key, recent watermarks and snapshot horizons, the start
-- of the next late-commit window, the source deletes the warehouse keeps.
INSERT INTO _pgrepl.incremental_state AS s
       (table_name, key_column, history, recheck_from, kept_deleted, kept_deleted_sum, updated_at)
VALUES (%(table)s, %(key)s, %(history)s::jsonb, %(recheck_from)s, %(kept)s, %(kept_sum)s, now())
ON CONFLICT (table_name) DO UPDATE
   SET key_column = EXCLUDED.key_column, history = EXCLUDED.history, recheck_from = EXCLUDED.recheck_from,
       kept_deleted = EXCLUDED.kept_deleted, kept_deleted_sum = EXCLUDED.kept_deleted_sum, updated_at = now()
