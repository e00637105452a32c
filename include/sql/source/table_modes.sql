-- Facts BACKUP_MODE needs from the source, each set-based (one scan per catalog, whatever the number of tables).
-- kind 'inherits': (child table, parent table) of every partition and inheritance child;
-- kind 'uses': (table, type or sequence) — a column's type (arrays mapped to their element type), a default's
--              sequence, and (type, type) — a domain's base type, so that chains domain -> enum are followed;
-- kind 'reads': (view or materialized view, relation it reads).
-- Columns: kind, from oid, to oid, to kind ('t' type, 'S' sequence, 'r' relation).
SELECT 'inherits', i.inhrelid, i.inhparent, 'r'
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid AND c.relkind IN ('r', 'p', 'f')
UNION ALL
SELECT 'uses', CASE WHEN d.classid = 'pg_attrdef'::regclass THEN ad.adrelid ELSE d.objid END,
       CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN t.typelem ELSE t.oid END, 't'
  FROM pg_depend d
  JOIN pg_type t ON d.refclassid = 'pg_type'::regclass AND t.oid = d.refobjid
  LEFT JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
 WHERE d.classid IN ('pg_class'::regclass, 'pg_attrdef'::regclass, 'pg_type'::regclass) AND d.deptype = 'n'
   AND t.typnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
UNION ALL
SELECT 'uses', ad.adrelid, s.oid, 'S'
  FROM pg_depend d
  JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
  JOIN pg_class s ON d.refclassid = 'pg_class'::regclass AND s.oid = d.refobjid AND s.relkind = 'S'
 WHERE d.deptype = 'n'
UNION ALL
SELECT DISTINCT 'reads', r.ev_class, d.refobjid, 'r'
  FROM pg_rewrite r
  JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                  AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class
