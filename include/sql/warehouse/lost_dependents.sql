-- What DROP SCHEMA <aside> CASCADE takes along from outside the aside schema: objects (views, foreign keys,
-- triggers ...) that live on a relation outside it but depend on a relation inside it.
-- Parameter: %(aside)s the aside schema name.
WITH aside AS (SELECT oid FROM pg_namespace WHERE nspname = %(aside)s),
dependent AS (
    SELECT d.classid, d.objid, d.objsubid,
           CASE d.classid
               WHEN 'pg_class'::regclass THEN d.objid
               WHEN 'pg_rewrite'::regclass THEN (SELECT ev_class FROM pg_rewrite WHERE oid = d.objid)
               WHEN 'pg_constraint'::regclass THEN (SELECT conrelid FROM pg_constraint WHERE oid = d.objid)
               WHEN 'pg_attrdef'::regclass THEN (SELECT adrelid FROM pg_attrdef WHERE oid = d.objid)
               WHEN 'pg_trigger'::regclass THEN (SELECT tgrelid FROM pg_trigger WHERE oid = d.objid)
           END AS on_relation
      FROM pg_depend d
      JOIN pg_class c ON c.oid = d.refobjid AND d.refclassid = 'pg_class'::regclass
     WHERE c.relnamespace = (SELECT oid FROM aside) AND d.deptype = 'n'
)
SELECT DISTINCT pg_describe_object(classid, objid, objsubid)
  FROM dependent
 WHERE on_relation IS NOT NULL
   AND (SELECT relnamespace FROM pg_class WHERE oid = on_relation) <> (SELECT oid FROM aside)
 ORDER BY 1
