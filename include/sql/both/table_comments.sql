-- Comments of the given tables and of their columns, in the database it runs on (source or warehouse).
-- Parameters: schemas and tables, two text[] of the same length (schema and name of each table).
-- Columns: schema, table, column (NULL: the table itself), comment (NULL: none). Every live column is listed,
-- with or without a comment, so that the caller knows which columns exist. A table that does not exist
-- gives no row.
WITH wanted AS (
    SELECT c.oid, n.nspname, c.relname
      FROM unnest(%(schemas)s::text[], %(tables)s::text[]) AS t(schema_name, table_name)
      JOIN pg_namespace n ON n.nspname = t.schema_name
      JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name AND c.relkind IN ('r', 'p', 'f')
)
SELECT w.nspname, w.relname, NULL::text, d.description
  FROM wanted w
  LEFT JOIN pg_description d ON d.classoid = 'pg_class'::regclass AND d.objoid = w.oid AND d.objsubid = 0
UNION ALL
SELECT w.nspname, w.relname, a.attname::text, d.description
  FROM wanted w
  JOIN pg_attribute a ON a.attrelid = w.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_description d ON d.classoid = 'pg_class'::regclass AND d.objoid = w.oid AND d.objsubid = a.attnum
 ORDER BY 1, 2, 3 NULLS FIRST
