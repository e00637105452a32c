-- Rows for the sample schema; sizes come from the custom settings pgrepl.users etc. (set by the caller).
INSERT INTO users ("firstName", "lastName", email, "createdAt")
SELECT 'first' || i, 'last' || i, 'user' || i || '@example.net', timestamptz '2020-01-01' + i * interval '7 minutes'
FROM generate_series(1, current_setting('pgrepl.users')::int) AS i;

INSERT INTO assessments ("userId", type, state, "createdAt")
SELECT 1 + (i % current_setting('pgrepl.users')::int), (ARRAY['CAMPAIGN', 'COMPETENCE_EVALUATION', 'CERTIFICATION'])[1 + i % 3],
       'completed', timestamptz '2020-01-01' + i * interval '3 minutes'
FROM generate_series(1, current_setting('pgrepl.assessments')::int) AS i;

INSERT INTO answers (value, result, "assessmentId", "challengeId", "createdAt", timeout, "elapsedTime", "resultDetails")
SELECT 'answer ' || md5(i::text), (ARRAY['ok', 'ko', 'skipped'])[1 + i % 3],
       1 + (i % current_setting('pgrepl.assessments')::int), 'rec' || (i % 5000),
       timestamptz '2020-01-01' + i * interval '20 seconds', CASE WHEN i % 7 = 0 THEN 60 END, i % 300,
       'details: ' || repeat('x', i % 40)
FROM generate_series(1, current_setting('pgrepl.answers')::int) AS i;

INSERT INTO "answers-archive" SELECT * FROM answers WHERE id % 10 = 0;
SELECT setval('"answers-archive_id_seq"', (SELECT max(id) FROM "answers-archive"));

INSERT INTO "knowledge-elements" (source, status, "createdAt", "answerId", "assessmentId", "skillId", "earnedPix", "userId", "competenceId")
SELECT 'direct', (ARRAY['validated', 'invalidated'])[1 + i % 2], timestamptz '2020-01-01' + i * interval '20 seconds',
       1 + (i % current_setting('pgrepl.answers')::int), 1 + (i % current_setting('pgrepl.assessments')::int),
       'skill' || (i % 900), (i % 8)::real, 1 + (i % current_setting('pgrepl.users')::int), 'comp' || (i % 16)
FROM generate_series(1, current_setting('pgrepl.knowledge_elements')::int) AS i;

INSERT INTO "knowledge-element-snapshots" ("userId", "snappedAt", snapshot)
SELECT 1 + (i % current_setting('pgrepl.users')::int), timestamptz '2021-01-01' + i * interval '1 hour',
       jsonb_build_object('knowledgeElements', jsonb_build_array(jsonb_build_object('id', i, 'skillId', 'skill' || (i % 900), 'earnedPix', i % 8)))
FROM generate_series(1, current_setting('pgrepl.snapshots')::int) AS i;

INSERT INTO "organization-learners" ("firstName", "lastName", "userId", "organizationId")
SELECT 'first' || i, 'last' || i, 1 + (i % current_setting('pgrepl.users')::int), 1 + i % 50
FROM generate_series(1, greatest(1, current_setting('pgrepl.users')::int / 2)) AS i;

ANALYZE;
