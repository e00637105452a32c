-- The incremental copy's bookkeeping of one table (no row: never copied, or copied before this bookkeeping existed).
SELECT key_column, history, recheck_from, kept_deleted, kept_deleted_sum
FROM _pgrepl.incremental_state
WHERE table_name = %(table)s
