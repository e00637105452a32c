-- The incremental copy's bookkeeping in the warehouse (idempotent): per table, the key it was copied by,
-- the recent copies' watermarks and source snapshot horizons (which bound the late-commit window of the next
-- run), and the rows deleted at the source that the warehouse keeps ("deletes": "ignore").
CREATE SCHEMA IF NOT EXISTS _pgrepl;
CREATE TABLE IF NOT EXISTS _pgrepl.incremental_state (
    table_name    text PRIMARY KEY,
    key_column    text NOT NULL,
    history       jsonb NOT NULL DEFAULT '[]',
    recheck_from  numeric,
    kept_deleted  bigint NOT NULL DEFAULT 0,
    kept_deleted_sum numeric NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
