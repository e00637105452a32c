-- Every partition and inheritance child of the source with its parent (catalog only: no table is locked).
-- Columns: child oid, parent oid.
SELECT i.inhrelid, i.inhparent
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid AND c.relkind IN ('r', 'p', 'f')
