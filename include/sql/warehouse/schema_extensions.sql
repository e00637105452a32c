-- Extensions installed in a schema, and whether they can move. Parameter: the schema.
SELECT extname, extrelocatable
  FROM pg_extension
 WHERE extnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s)
