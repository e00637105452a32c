-- Ownership of every dumpable object by its table, in the source database (see restore_list.SourceCatalog).
-- Columns: classid, objid, owning table oid.
SELECT 'pg_class'::regclass::oid, c.oid, c.oid
  FROM pg_class c
 WHERE c.relkind IN ('r', 'p', 'f', 'm', 'v')
UNION ALL
SELECT 'pg_class'::regclass::oid, i.indexrelid, i.indrelid FROM pg_index i
UNION ALL
SELECT 'pg_constraint'::regclass::oid, con.oid, con.conrelid FROM pg_constraint con WHERE con.conrelid <> 0
UNION ALL
SELECT 'pg_attrdef'::regclass::oid, d.oid, d.adrelid FROM pg_attrdef d
UNION ALL
SELECT 'pg_trigger'::regclass::oid, t.oid, t.tgrelid FROM pg_trigger t
UNION ALL
SELECT 'pg_rewrite'::regclass::oid, r.oid, r.ev_class FROM pg_rewrite r
UNION ALL
SELECT 'pg_policy'::regclass::oid, p.oid, p.polrelid FROM pg_policy p
UNION ALL
SELECT 'pg_statistic_ext'::regclass::oid, s.oid, s.stxrelid FROM pg_statistic_ext s
UNION ALL
SELECT 'pg_class'::regclass::oid, d.objid, d.refobjid
  FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
