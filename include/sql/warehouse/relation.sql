-- Name, kind and schema of one relation. Parameter: its oid.
SELECT c.relname, c.relkind, n.nspname
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = %s
