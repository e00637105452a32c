-- The warehouse role as preflight checks it: name, superuser (refused), CREATE on the database (the swap needs it).
SELECT current_user, rolsuper, has_database_privilege(current_database(), 'CREATE')
  FROM pg_roles
 WHERE rolname = current_user
