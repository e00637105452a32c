-- Foreign keys whose referencing (child) table is one of the given (schema, name) pairs:
-- child schema/name, parent schema/name, constraint name.
SELECT cn.nspname::text AS child_schema, cc.relname::text AS child_name,
       pn.nspname::text AS parent_schema, pc.relname::text AS parent_name,
       con.conname::text AS constraint_name
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class cc ON cc.oid = con.conrelid
JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace
JOIN pg_catalog.pg_class pc ON pc.oid = con.confrelid
JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
WHERE con.contype = 'f'
  AND (cn.nspname, cc.relname) IN (SELECT s, n FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS w(s, n))
ORDER BY 1, 2, 3, 4, 5
