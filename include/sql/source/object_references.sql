-- Objects that reference another table than their own, in the source database (see restore_list.SourceCatalog):
-- foreign keys (the referenced table) and column defaults using another table's sequence.
-- Columns: classid, objid, referenced table oid.
SELECT 'pg_constraint'::regclass::oid, oid, confrelid FROM pg_constraint WHERE contype = 'f'
UNION ALL
SELECT d.classid, d.objid, d.refobjid
  FROM pg_depend d
 WHERE d.classid = 'pg_attrdef'::regclass
   AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'n'
   AND d.refobjid <> (SELECT adrelid FROM pg_attrdef WHERE oid = d.objid)
