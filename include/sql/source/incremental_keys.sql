-- Incremental key candidates of several tables at once (one row per wanted table, in the given order):
-- the relation's kind, the named "key" column (if one was named), the "id" column, and the primary key's
-- single column (NULL when the primary key has several columns or there is none). Python chooses.
WITH wanted AS (
    SELECT w.schema_name, w.table_name, w.key_name, w.ord
    FROM unnest(%(schemas)s::text[], %(names)s::text[], %(keys)s::text[]) WITH ORDINALITY AS w(schema_name, table_name, key_name, ord)
)
SELECT w.schema_name,
       w.table_name,
       c.relkind::text                                          AS relkind,
       w.key_name,
       ka.attname IS NOT NULL                                   AS key_exists,
       ka.atttypid::int8                                        AS key_type_oid,
       pg_catalog.format_type(ka.atttypid, ka.atttypmod)        AS key_type,
       ia.atttypid::int8                                        AS id_type_oid,
       pg_catalog.format_type(ia.atttypid, ia.atttypmod)        AS id_type,
       pk.columns                                               AS pk_columns,
       pa.attname::text                                         AS pk_column,
       pa.atttypid::int8                                        AS pk_type_oid
FROM wanted w
LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = w.schema_name
LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = w.table_name
LEFT JOIN pg_catalog.pg_attribute ka
       ON ka.attrelid = c.oid AND ka.attname = w.key_name AND ka.attnum > 0 AND NOT ka.attisdropped
LEFT JOIN pg_catalog.pg_attribute ia
       ON ia.attrelid = c.oid AND ia.attname = 'id' AND ia.attnum > 0 AND NOT ia.attisdropped
LEFT JOIN LATERAL (
    SELECT con.conkey,
           (SELECT pg_catalog.array_agg(a.attname::text ORDER BY k.i)
            FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, i)
            JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum) AS columns
    FROM pg_catalog.pg_constraint con
    WHERE con.conrelid = c.oid AND con.contype = 'p'
) pk ON true
LEFT JOIN pg_catalog.pg_attribute pa
       ON pa.attrelid = c.oid AND pk.conkey IS NOT NULL AND pg_catalog.cardinality(pk.conkey) = 1
      AND pa.attnum = pk.conkey[1]
ORDER BY w.ord
