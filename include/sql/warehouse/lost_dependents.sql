-- What DROP SCHEMA <aside> CASCADE takes along from outside the aside schema: objects (views, foreign keys,
-- triggers ...) that live on a relation outside it but depend on a relation inside it.
-- Parameter: %(aside)s the aside schema name.
-- Joins, not a subquery per dependency (issue 19): one pass over pg_depend whatever the number of tables.
WITH aside AS (SELECT oid FROM pg_namespace WHERE nspname = %(aside)s),
dependent AS (
    SELECT d.classid, d.objid, d.objsubid,
           CASE d.classid
               WHEN 'pg_class'::regclass THEN d.objid
               WHEN 'pg_rewrite'::regclass THEN rw.ev_class
               WHEN 'pg_constraint'::regclass THEN con.conrelid
               WHEN 'pg_attrdef'::regclass THEN ad.adrelid
               WHEN 'pg_trigger'::regclass THEN tg.tgrelid
           END AS on_relation
      FROM pg_depend d
      JOIN pg_class c ON c.oid = d.refobjid AND d.refclassid = 'pg_class'::regclass
      LEFT JOIN pg_rewrite rw ON d.classid = 'pg_rewrite'::regclass AND rw.oid = d.objid
      LEFT JOIN pg_constraint con ON d.classid = 'pg_constraint'::regclass AND con.oid = d.objid
      LEFT JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
      LEFT JOIN pg_trigger tg ON d.classid = 'pg_trigger'::regclass AND tg.oid = d.objid
     WHERE c.relnamespace = (SELECT oid FROM aside) AND d.deptype = 'n'
)
SELECT DISTINCT pg_describe_object(x.classid, x.objid, x.objsubid)
  FROM dependent x
  JOIN pg_class r ON r.oid = x.on_relation
 WHERE r.relnamespace <> (SELECT oid FROM aside)
 ORDER BY 1
