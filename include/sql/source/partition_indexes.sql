-- Indexes that are partitions of a partitioned index (their INDEX ATTACH lines carry no catalog id, only the
-- index name): schema, index name, index oid, oid of the constraint the index backs (or null).
SELECT n.nspname, c.relname, c.oid, con.oid
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_index i ON i.indexrelid = c.oid
  LEFT JOIN pg_constraint con ON con.conindid = c.oid AND con.conrelid = i.indrelid
 WHERE c.relkind IN ('i', 'I') AND c.relispartition
