{% from "macros/enrichment.j2" import index_when_table_exists %}
-- The seed's enrichment: users by day of creation (UTC+1). Files sharing the number prefix 010 are built at the same time.
{{ index_when_table_exists("users", "users_createdAt_idx", "(cast(\"createdAt\" AT TIME ZONE 'UTC+1' as date) DESC)") }}
