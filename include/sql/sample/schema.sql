-- Pix-like source schema (DESIGN.md "Data shapes"), names as knex creates them.
CREATE TABLE users (
    id serial PRIMARY KEY,
    "firstName" varchar(255) NOT NULL,
    "lastName" varchar(255) NOT NULL,
    email varchar(255) UNIQUE,
    "createdAt" timestamptz NOT NULL DEFAULT now(),
    "updatedAt" timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE users IS 'Pix users';

CREATE TABLE assessments (
    id serial PRIMARY KEY,
    "userId" integer REFERENCES users(id),
    type varchar(255),
    state varchar(255),
    "createdAt" timestamptz NOT NULL DEFAULT now(),
    "updatedAt" timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assessments_userid_index ON assessments ("userId");

CREATE TABLE answers (
    id serial PRIMARY KEY,
    value text,
    result varchar(255),
    "assessmentId" integer REFERENCES assessments(id),
    "challengeId" varchar(255) NOT NULL,
    "createdAt" timestamptz NOT NULL DEFAULT now(),
    "updatedAt" timestamptz NOT NULL DEFAULT now(),
    timeout integer,
    "elapsedTime" integer,
    "resultDetails" text
);
CREATE INDEX answers_assessmentid_index ON answers ("assessmentId");
COMMENT ON COLUMN answers.value IS 'what the user answered';

-- a full-mode table whose name contains an excluded one's (the seed's regex matched it too)
CREATE TABLE "answers-archive" (LIKE answers INCLUDING DEFAULTS);
ALTER TABLE "answers-archive" ALTER COLUMN id DROP DEFAULT;
CREATE SEQUENCE "answers-archive_id_seq" OWNED BY "answers-archive".id;
ALTER TABLE "answers-archive" ALTER COLUMN id SET DEFAULT nextval('"answers-archive_id_seq"');
ALTER TABLE "answers-archive" ADD PRIMARY KEY (id);
CREATE INDEX "answers-archive_challengeid_index" ON "answers-archive" ("challengeId");

CREATE TABLE "knowledge-elements" (
    id serial PRIMARY KEY,
    source varchar(255),
    status varchar(255),
    "createdAt" timestamptz NOT NULL DEFAULT now(),
    "answerId" integer REFERENCES answers(id),
    "assessmentId" integer REFERENCES assessments(id),
    "skillId" varchar(255),
    "earnedPix" real,
    "userId" integer REFERENCES users(id),
    "competenceId" varchar(255)
);
CREATE INDEX knowledge_elements_userid_index ON "knowledge-elements" ("userId");

CREATE TABLE "knowledge-element-snapshots" (
    id serial PRIMARY KEY,
    "userId" integer,
    "snappedAt" timestamptz NOT NULL,
    snapshot jsonb,
    UNIQUE ("userId", "snappedAt")
);
COMMENT ON COLUMN "knowledge-element-snapshots"."snappedAt" IS 'when the snapshot was taken';

CREATE TABLE "organization-learners" (
    id serial PRIMARY KEY,
    "firstName" varchar(255),
    "lastName" varchar(255),
    "userId" integer REFERENCES users(id),
    "organizationId" integer,
    "createdAt" timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW "active-users" AS SELECT id, email FROM users WHERE "createdAt" > '2000-01-01';
