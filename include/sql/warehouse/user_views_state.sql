-- Users' views and materialized views kept across the swap (see plugins/pgrepl/user_views.py); idempotent.
-- state: saved (a swap is in progress; the view still exists), dropped (the swap was finalized; to recreate),
-- broken (it did not compile against the new tables; retried every night, reported until fixed or deleted here),
-- switched (a plain view recreated inside the switch's transaction; the user_views task reports it and forgets it).
CREATE TABLE IF NOT EXISTS _pgrepl.user_views (
    schema_name text NOT NULL,
    view_name text NOT NULL,
    kind "char" NOT NULL CHECK (kind IN ('v', 'm')),
    position integer NOT NULL,
    definition text NOT NULL,
    owner text NOT NULL,
    options text[],
    populated boolean NOT NULL DEFAULT true,
    comment text,
    column_comments jsonb NOT NULL DEFAULT '[]',
    grants jsonb NOT NULL DEFAULT '[]',
    indexes jsonb NOT NULL DEFAULT '[]',
    state text NOT NULL CHECK (state IN ('saved', 'dropped', 'broken', 'switched')),
    error text,
    run_id text,
    saved_at timestamptz NOT NULL DEFAULT now(),
    broken_since timestamptz,
    PRIMARY KEY (schema_name, view_name)
);
-- The views and materialized views the last finalized restore created (the source's, not users').
CREATE TABLE IF NOT EXISTS _pgrepl.source_views (
    schema_name text NOT NULL,
    view_name text NOT NULL,
    PRIMARY KEY (schema_name, view_name)
);
-- warehouses set up before the state 'switched' existed
DO $pgrepl$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = '_pgrepl.user_views'::regclass AND contype = 'c'
                  AND pg_get_constraintdef(oid) LIKE '%state%' AND pg_get_constraintdef(oid) NOT LIKE '%switched%') THEN
        ALTER TABLE _pgrepl.user_views DROP CONSTRAINT user_views_state_check;
        ALTER TABLE _pgrepl.user_views ADD CONSTRAINT user_views_state_check
            CHECK (state IN ('saved', 'dropped', 'broken', 'switched'));
    END IF;
END
$pgrepl$;
