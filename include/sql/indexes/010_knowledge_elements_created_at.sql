{% from "macros/enrichment.j2" import index_when_table_exists %}
-- The seed's enrichment: knowledge elements by day of creation (UTC+1). Built with the restore (see indexes/README.md).
{{ index_when_table_exists("knowledge-elements", "knowledge-elements_createdAt_idx", "(cast(\"createdAt\" AT TIME ZONE 'UTC+1' as date) DESC)") }}
