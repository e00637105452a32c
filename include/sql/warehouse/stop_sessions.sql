-- Terminate the other sessions of this role in this database named %(app)s; count them.
SELECT count(pg_terminate_backend(pid))
  FROM pg_stat_activity
 WHERE datname = current_database()
   AND application_name = %(app)s
   AND pid <> pg_backend_pid()
   AND usename = current_user
