-- In the warehouse, before the swap: which kept tables exist, and the types and sequences they use that the swap
-- must keep with them (column types, domains' base types, default sequences not OWNED BY a table, functions their
-- defaults, check constraints and domains call).
-- Parameters: %(schemas)s, %(names)s text[] — the kept tables (partitions included), pairwise.
-- Columns: kind ('r' table present, 't' type, 'S' sequence, 'f' function), schema, name,
--          detail (typtype of a type, identity arguments of a function, else null).
WITH RECURSIVE kept AS (
    SELECT c.oid, n.nspname, c.relname
      FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS k(schema_name, table_name)
      JOIN pg_namespace n ON n.nspname = k.schema_name
      JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = k.table_name AND c.relkind IN ('r', 'p')
),
uses(kind, oid) AS (
    SELECT CASE WHEN d.refclassid = 'pg_type'::regclass THEN 't' ELSE 'S' END,
           CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN t.typelem ELSE d.refobjid END
      FROM pg_depend d
      LEFT JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
      LEFT JOIN pg_type t ON d.refclassid = 'pg_type'::regclass AND t.oid = d.refobjid
     WHERE d.deptype = 'n' AND d.refclassid IN ('pg_type'::regclass, 'pg_class'::regclass)
       AND ((d.classid = 'pg_class'::regclass AND d.objid IN (SELECT oid FROM kept))
            OR ad.adrelid IN (SELECT oid FROM kept))
  UNION
    SELECT 't', CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN t.typelem ELSE d.refobjid END
      FROM uses u
      JOIN pg_depend d ON u.kind = 't' AND d.classid = 'pg_type'::regclass AND d.objid = u.oid
                      AND d.refclassid = 'pg_type'::regclass AND d.deptype = 'n'
      JOIN pg_type t ON t.oid = d.refobjid
)
SELECT 'r', nspname, relname, NULL FROM kept
UNION ALL
SELECT 't', n.nspname, t.typname, t.typtype::text
  FROM uses u JOIN pg_type t ON u.kind = 't' AND t.oid = u.oid
  JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%%'
   AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
   AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_type'::regclass AND e.objid = t.oid
                      AND e.deptype = 'e')  -- an extension's type moves with its extension
UNION ALL
SELECT 'S', n.nspname, s.relname, NULL
  FROM uses u JOIN pg_class s ON u.kind = 'S' AND s.oid = u.oid AND s.relkind = 'S'
  JOIN pg_namespace n ON n.oid = s.relnamespace
 WHERE NOT EXISTS (SELECT 1 FROM pg_depend o WHERE o.classid = 'pg_class'::regclass AND o.objid = s.oid
                      AND o.refclassid = 'pg_class'::regclass AND o.deptype IN ('a', 'i'))
UNION ALL
SELECT DISTINCT 'f', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)
  FROM pg_depend d
  LEFT JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
  LEFT JOIN pg_constraint con ON d.classid = 'pg_constraint'::regclass AND con.oid = d.objid
  JOIN pg_proc p ON d.refclassid = 'pg_proc'::regclass AND p.oid = d.refobjid
  JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE d.deptype = 'n'
   AND (ad.adrelid IN (SELECT oid FROM kept) OR con.conrelid IN (SELECT oid FROM kept)
        OR con.contypid IN (SELECT oid FROM uses WHERE kind = 't'))
   AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid
                      AND e.deptype = 'e')  -- an extension's function moves with its extension
