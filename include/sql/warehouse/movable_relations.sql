-- Relations of a schema that can be moved to another schema (tables, views, sequences ...): not owned by another
-- relation (an identity/serial sequence follows its table, an index its table); a partition comes with the oid of
-- its parent (it is moved where its parent goes).
-- Parameter: the schema. Columns: oid, relname, parent oid (partitions; null otherwise).
SELECT c.oid, c.relname, (SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = c.oid) AS parent
  FROM pg_class c
 WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s)
   AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
   AND (c.relispartition  -- goes where its parent goes
        OR NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                         AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
                         AND d.refobjid <> c.oid  -- a partitioned table depends on itself
                         AND d.deptype IN ('a', 'i')))
 ORDER BY c.relkind, c.relname
