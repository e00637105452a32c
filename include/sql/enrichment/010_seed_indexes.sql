-- The seed's enrichment: four indexes analysts rely on. Idempotent; a table the warehouse lacks is skipped
-- with a notice (e.g. an incremental table before its first bootstrap).
DO $$
DECLARE
    wanted CONSTANT text[][] := ARRAY[
        ['knowledge-elements', 'knowledge-elements_createdAt_idx', '(cast("createdAt" AT TIME ZONE ''UTC+1'' as date) DESC)'],
        ['knowledge-element-snapshots', 'knowledge-element-snapshots_snappedAt_idx', '(cast("snappedAt" AT TIME ZONE ''UTC+1'' as date) DESC)'],
        ['answers', 'answers_challengeId_idx', '("challengeId")'],
        ['users', 'users_createdAt_idx', '(cast("createdAt" AT TIME ZONE ''UTC+1'' as date) DESC)']
    ];
    i integer;
BEGIN
    FOR i IN 1 .. array_length(wanted, 1) LOOP
        IF to_regclass(format('public.%I', wanted[i][1])) IS NULL THEN
            RAISE NOTICE 'enrichment: table % is missing, index % skipped', wanted[i][1], wanted[i][2];
        ELSE
            EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON public.%I %s', wanted[i][2], wanted[i][1], wanted[i][3]);
        END IF;
    END LOOP;
END
$$;
