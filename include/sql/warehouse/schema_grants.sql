-- Privileges granted on a schema to roles other than its owner (grantee 0 is PUBLIC). Parameter: the schema.
SELECT a.grantee, a.privilege_type
  FROM pg_namespace n, aclexplode(n.nspacl) a
 WHERE n.nspname = %s
   AND a.grantee <> n.nspowner
