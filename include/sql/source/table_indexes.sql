-- Primary key and indexes of one relation (by oid), as DDL. Run with an empty search_path (qualified names).
SELECT con.conname::text                                   AS constraint_name,
       pg_catalog.pg_get_constraintdef(con.oid)            AS constraint_sql,
       pg_catalog.pg_get_indexdef(i.indexrelid)            AS index_sql,
       i.indisprimary                                      AS is_primary
FROM pg_catalog.pg_index i
LEFT JOIN pg_catalog.pg_constraint con ON con.conindid = i.indexrelid AND con.contype = 'p' AND con.conrelid = i.indrelid
WHERE i.indrelid = %(oid)s::oid
ORDER BY i.indisprimary DESC, i.indexrelid
