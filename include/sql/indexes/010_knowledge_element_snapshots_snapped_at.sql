{% from "macros/enrichment.j2" import index_when_table_exists %}
-- The seed's enrichment: snapshots by day (UTC+1). Built with the restore (see indexes/README.md).
{{ index_when_table_exists("knowledge-element-snapshots", "knowledge-element-snapshots_snappedAt_idx", "(cast(\"snappedAt\" AT TIME ZONE 'UTC+1' as date) DESC)") }}
