-- User-defined types of the source (no array types): oid, schema, name, typtype, the table whose row type it is
-- (0 for enums, domains, ranges and standalone composite types), and the oids of a domain's constraints.
SELECT t.oid, n.nspname, t.typname, t.typtype,
       coalesce((SELECT c.oid FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c'), 0) AS table_oid,
       coalesce((SELECT array_agg(con.oid) FROM pg_constraint con WHERE con.contypid = t.oid), '{}') AS constraints
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
   AND NOT (t.typcategory = 'A' AND t.typelem <> 0)
