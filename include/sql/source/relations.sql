-- Every user relation of the source: oid, schema, name, kind, owning table of a sequence (or null).
SELECT c.oid, n.nspname, c.relname, c.relkind,
       (SELECT d.refobjid FROM pg_depend d
         WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
           AND d.deptype IN ('a', 'i') LIMIT 1) AS owner_table
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'f', 'm', 'v', 'S')
   AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
 ORDER BY n.nspname, c.relname
