-- User-defined types of the source (no array types): oid, schema, name, typtype, the table whose row type it is
-- (0 for enums, domains, ranges and standalone composite types), and the oids of a domain's constraints.
-- Joins, not a subquery per type (issue 19).
SELECT t.oid, n.nspname, t.typname, t.typtype,
       coalesce(c.oid, 0) AS table_oid,
       coalesce(k.constraints, '{}') AS constraints
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  LEFT JOIN pg_class c ON c.oid = t.typrelid AND c.relkind <> 'c'
  LEFT JOIN (SELECT contypid, array_agg(oid) AS constraints
               FROM pg_constraint WHERE contypid <> 0 GROUP BY contypid) k ON k.contypid = t.oid
 WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
   AND NOT (t.typcategory = 'A' AND t.typelem <> 0)
