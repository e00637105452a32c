-- Sessions of this database holding the warehouse's session advisory lock (key %(key)s), with their application
-- name (lock_warehouse names its sessions after their run).
SELECT l.pid, a.application_name
  FROM pg_locks l
  JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid = (%(key)s >> 32)::oid AND l.objid = (%(key)s & 4294967295)::oid AND l.objsubid = 1
   AND l.pid <> pg_backend_pid()
