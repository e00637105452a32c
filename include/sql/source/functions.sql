-- Functions of the source named in the warehouse (kept with the kept tables that call them): oid, schema, name,
-- identity arguments. Parameters: %(schemas)s, %(names)s text[], pairwise.
SELECT p.oid, n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)
  FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS k(schema_name, function_name)
  JOIN pg_namespace n ON n.nspname = k.schema_name
  JOIN pg_proc p ON p.pronamespace = n.oid AND p.proname = k.function_name
