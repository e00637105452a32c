-- The PARTITION BY clause (without the keywords) of a partitioned table, by oid. Empty search_path: qualified names.
SELECT pg_catalog.pg_get_partkeydef(%(oid)s::oid)
