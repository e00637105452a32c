-- Every partition below a partitioned table (by oid), parents before children: what a bootstrap needs to
-- create the same tree on the target (bound as DDL text; partition key when the partition is itself partitioned).
-- Run with an empty search_path so that names come out schema-qualified.
SELECT pn.nspname::text                                                    AS schema_name,
       pc.relname::text                                                    AS table_name,
       parn.nspname::text                                                  AS parent_schema,
       parc.relname::text                                                  AS parent_name,
       pg_catalog.pg_get_expr(pc.relpartbound, pc.oid)                     AS bound_sql,
       CASE WHEN pc.relkind = 'p' THEN pg_catalog.pg_get_partkeydef(pc.oid) END AS partition_key_sql
FROM pg_catalog.pg_partition_tree(%(oid)s::oid::regclass) t
JOIN pg_catalog.pg_class pc ON pc.oid = t.relid
JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
JOIN pg_catalog.pg_class parc ON parc.oid = t.parentrelid
JOIN pg_catalog.pg_namespace parn ON parn.oid = parc.relnamespace
WHERE t.level > 0
ORDER BY t.level, pn.nspname, pc.relname
