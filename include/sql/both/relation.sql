-- The relation named (schema, name): its oid and kind ('r' table, 'p' partitioned, 'v' view ...); no row if absent.
SELECT c.oid::int8 AS oid, c.relkind::text AS relkind
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(name)s
