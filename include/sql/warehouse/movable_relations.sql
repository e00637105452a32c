-- Relations of a schema that can be moved to another schema on their own (tables, views, sequences ...): not a
-- partition, not owned by another relation (an identity/serial sequence follows its table, an index its table).
-- Parameter: the schema. Columns: oid, relname, relkind.
SELECT c.oid, c.relname, c.relkind
  FROM pg_class c
 WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s)
   AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
   AND NOT c.relispartition
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                     AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
                     AND d.deptype IN ('a', 'i'))
 ORDER BY c.relkind, c.relname
