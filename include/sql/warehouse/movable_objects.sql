-- Types and functions of a schema named by the caller (kept with the tables of BACKUP_MODE that use them).
-- Parameters: %(schema)s; %(types)s text[] type names; %(functions)s, %(arguments)s text[] function names and
-- identity arguments, pairwise. Columns: 't' (type) or 'f' (function), oid.
SELECT 't', t.oid
  FROM pg_type t
 WHERE t.typnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s)
   AND t.typname = ANY(%(types)s::text[])
UNION ALL
SELECT 'f', p.oid
  FROM pg_proc p
  JOIN unnest(%(functions)s::text[], %(arguments)s::text[]) AS k(name, args)
    ON p.proname = k.name AND pg_get_function_identity_arguments(p.oid) = k.args
 WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s)
