-- Labels of the named enums, in their order. Parameters: %(schemas)s, %(names)s text[], pairwise.
SELECT n.nspname, t.typname, e.enumlabel
  FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS k(schema_name, type_name)
  JOIN pg_namespace n ON n.nspname = k.schema_name
  JOIN pg_type t ON t.typnamespace = n.oid AND t.typname = k.type_name
  JOIN pg_enum e ON e.enumtypid = t.oid
 ORDER BY 1, 2, e.enumsortorder
