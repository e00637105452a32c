{% from "macros/enrichment.j2" import index_when_table_exists %}
-- The seed's enrichment: answers by challenge. Built with the restore (see indexes/README.md).
{{ index_when_table_exists("answers", "answers_challengeId_idx", "(\"challengeId\")") }}
