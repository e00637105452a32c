-- Objects that stay in the warehouse (moved back from the aside schema) but depend on something that stays aside
-- and would be dropped with it: a column type, a default's sequence or function. Foreign keys are left out on
-- purpose (a kept table's FK to a replaced table goes with the old table, as in the seed).
-- Parameters: %(kept)s oid[] of the kept relations, %(aside)s the aside schema name.
-- Set-based (issue 19): the kept relations' dependencies are found through pg_depend's index on the depender, the
-- relations the kept ones own in one pass; no per-row subquery scans pg_depend.
WITH kept AS (
    SELECT DISTINCT unnest(%(kept)s::oid[]) AS oid
),
needs AS (  -- what a kept relation or one of its column defaults depends on
    SELECT d.objid AS kept_oid, d.refclassid, d.refobjid
      FROM kept k
      JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = k.oid AND d.deptype = 'n'
    UNION ALL
    SELECT ad.adrelid, d.refclassid, d.refobjid
      FROM kept k
      JOIN pg_attrdef ad ON ad.adrelid = k.oid
      JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.deptype = 'n'
),
owned_by_kept AS (  -- sequences (serial/identity) a kept relation owns: they move with it
    SELECT o.objid
      FROM pg_depend o
     WHERE o.refclassid = 'pg_class'::regclass AND o.refobjid IN (SELECT oid FROM kept) AND o.deptype IN ('a', 'i')
)
SELECT DISTINCT k.relname AS kept, pg_describe_object(x.refclassid, x.refobjid, 0) AS needs
  FROM needs x
  JOIN pg_class k ON k.oid = x.kept_oid
  LEFT JOIN pg_type t ON x.refclassid = 'pg_type'::regclass AND t.oid = x.refobjid
  LEFT JOIN pg_proc p ON x.refclassid = 'pg_proc'::regclass AND p.oid = x.refobjid
  LEFT JOIN pg_class c ON x.refclassid = 'pg_class'::regclass AND c.oid = x.refobjid
 WHERE x.refobjid NOT IN (SELECT oid FROM kept)
   AND CASE x.refclassid
         WHEN 'pg_type'::regclass THEN t.typnamespace
         WHEN 'pg_proc'::regclass THEN p.pronamespace
         WHEN 'pg_class'::regclass THEN CASE WHEN x.refobjid IN (SELECT objid FROM owned_by_kept) THEN NULL
                                             ELSE c.relnamespace END
       END = (SELECT oid FROM pg_namespace WHERE nspname = %(aside)s)
