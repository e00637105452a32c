{% from "macros/enrichment.j2" import index_when_table_exists %}
-- The seed's enrichment: answers by challenge. Files sharing the number prefix 010 are built at the same time.
{{ index_when_table_exists("answers", "answers_challengeId_idx", "(\"challengeId\")") }}
