-- Objects that stay in the warehouse (moved back from the aside schema) but depend on something that stays aside
-- and would be dropped with it: a column type, a default's sequence or function. Foreign keys are left out on
-- purpose (a kept table's FK to a replaced table goes with the old table, as in the seed).
-- Parameters: %(kept)s oid[] of the kept relations, %(aside)s the aside schema name.
SELECT DISTINCT k.relname AS kept, pg_describe_object(d.refclassid, d.refobjid, 0) AS needs
  FROM pg_depend d
  JOIN pg_class k ON k.oid = ANY(%(kept)s)
  LEFT JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
 WHERE ((d.classid = 'pg_class'::regclass AND d.objid = k.oid) OR ad.adrelid = k.oid)
   AND d.deptype = 'n'
   AND d.refobjid NOT IN (SELECT unnest(%(kept)s::oid[]))
   AND CASE d.refclassid
         WHEN 'pg_type'::regclass THEN (SELECT typnamespace FROM pg_type WHERE oid = d.refobjid)
         WHEN 'pg_proc'::regclass THEN (SELECT pronamespace FROM pg_proc WHERE oid = d.refobjid)
         WHEN 'pg_class'::regclass THEN (SELECT relnamespace FROM pg_class WHERE oid = d.refobjid
                                          AND NOT EXISTS (SELECT 1 FROM pg_depend o WHERE o.objid = d.refobjid
                                                            AND o.refobjid = ANY(%(kept)s) AND o.deptype IN ('a', 'i')))
       END = (SELECT oid FROM pg_namespace WHERE nspname = %(aside)s)
