-- Everything needed to recreate the given views and materialized views: definition (run with an empty
-- search_path, so every name is qualified), owner, options, WITH [NO] DATA, comments, grants (aclexplode; a
-- null ACL is the owner's default one), a materialized view's indexes, and the other given views each one reads.
-- Parameter: %(oids)s oid[].
SELECT c.oid, n.nspname, c.relname, c.relkind,
       pg_get_viewdef(c.oid) AS definition,
       pg_get_userbyid(c.relowner) AS owner,
       c.reloptions,
       c.relispopulated,
       obj_description(c.oid, 'pg_class') AS comment,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(a.attname, d.description) ORDER BY a.attnum), '[]')
          FROM pg_attribute a
          JOIN pg_description d ON d.classoid = 'pg_class'::regclass AND d.objoid = c.oid AND d.objsubid = a.attnum
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS column_comments,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(
                   CASE WHEN x.grantee = 0 THEN NULL ELSE pg_get_userbyid(x.grantee) END,
                   x.privilege_type, x.is_grantable) ORDER BY x.grantee, x.privilege_type), '[]')
          FROM aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) x) AS grants,
       (SELECT coalesce(jsonb_agg(pg_get_indexdef(i.indexrelid) ORDER BY i.indexrelid), '[]')
          FROM pg_index i WHERE i.indrelid = c.oid) AS indexes,
       ARRAY(SELECT DISTINCT d.refobjid
               FROM pg_rewrite r
               JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
              WHERE r.ev_class = c.oid AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> c.oid
                AND d.refobjid = ANY(%(oids)s)) AS reads
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = ANY(%(oids)s)
