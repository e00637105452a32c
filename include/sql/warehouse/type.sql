-- Name, kind (typtype) and schema of one type. Parameter: its oid.
SELECT t.typname, t.typtype, n.nspname
  FROM pg_type t
  JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE t.oid = %s
