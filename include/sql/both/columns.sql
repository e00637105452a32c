-- Columns of one relation (by oid), in order, with what CREATE TABLE needs to rebuild them elsewhere.
-- Run with an empty search_path so that type, collation and function names come out schema-qualified.
SELECT a.attname::text                                   AS name,
       a.atttypid::int8                                  AS type_oid,
       pg_catalog.format_type(a.atttypid, a.atttypmod)   AS type_sql,
       a.attnotnull                                      AS not_null,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid)        AS default_sql,
       a.attgenerated::text                              AS generated,
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
            THEN pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname)
       END                                               AS collation_sql,
       EXISTS (SELECT 1
               FROM pg_catalog.pg_depend dep
               JOIN pg_catalog.pg_class s ON s.oid = dep.refobjid AND s.relkind = 'S'
               WHERE dep.classid = 'pg_catalog.pg_attrdef'::regclass AND dep.objid = d.oid) AS default_uses_sequence
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
WHERE a.attrelid = %(oid)s::oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
