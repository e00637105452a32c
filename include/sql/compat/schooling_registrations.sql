-- Compatibility view for consumers of the former table name (seed: create-schooling-registrations-view).
-- Created only when the warehouse has "organization-learners" and no relation named "schooling-registrations".
DO $$
BEGIN
    IF to_regclass('public."schooling-registrations"') IS NULL
       AND to_regclass('public."organization-learners"') IS NOT NULL THEN
        CREATE VIEW public."schooling-registrations" AS SELECT * FROM public."organization-learners";
    END IF;
END
$$;
