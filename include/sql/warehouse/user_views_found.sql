-- Views and materialized views that DROP SCHEMA ... CASCADE of the given schemas would take: every one inside
-- them, and every one elsewhere that reads (directly or through another view) a relation, type or function inside
-- them. System, extension-owned and pg-replication's own schemas are left out.
-- Parameter: %(schemas)s text[]. Columns: oid, schema, name, kind, inside (true when in one of the schemas).
WITH RECURSIVE given AS (
    SELECT oid FROM pg_namespace WHERE nspname = ANY(%(schemas)s)
),
views AS (
    SELECT c.oid, c.relnamespace
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('v', 'm')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_pgrepl')
       AND n.nspname NOT LIKE 'pg\_%%'
       AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass AND e.objid = c.oid
                         AND e.deptype = 'e')
),
uses AS (
    SELECT r.ev_class AS view_oid, d.refclassid, d.refobjid
      FROM pg_rewrite r
      JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid AND d.deptype = 'n'
     WHERE r.ev_class IN (SELECT oid FROM views) AND d.refobjid <> r.ev_class
),
seeds AS (
    SELECT oid FROM views WHERE relnamespace IN (SELECT oid FROM given)
    UNION
    SELECT u.view_oid
      FROM uses u
     WHERE CASE u.refclassid
               WHEN 'pg_class'::regclass THEN (SELECT relnamespace FROM pg_class WHERE oid = u.refobjid)
               WHEN 'pg_type'::regclass THEN (SELECT typnamespace FROM pg_type WHERE oid = u.refobjid)
               WHEN 'pg_proc'::regclass THEN (SELECT pronamespace FROM pg_proc WHERE oid = u.refobjid)
           END IN (SELECT oid FROM given)
),
found(oid) AS (
    SELECT oid FROM seeds
    UNION
    SELECT u.view_oid FROM uses u JOIN found f ON u.refclassid = 'pg_class'::regclass AND u.refobjid = f.oid
)
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relnamespace IN (SELECT oid FROM given) AS inside
  FROM found f
  JOIN pg_class c ON c.oid = f.oid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 ORDER BY n.nspname, c.relname
