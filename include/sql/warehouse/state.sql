-- pg-replication's own bookkeeping in the warehouse (schema "_pgrepl"); idempotent.
CREATE SCHEMA IF NOT EXISTS _pgrepl;
CREATE TABLE IF NOT EXISTS _pgrepl.lease (
    id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    run_id text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS _pgrepl.swap (
    schema_name text PRIMARY KEY,
    aside_name text NOT NULL,
    existed boolean NOT NULL,
    moved_back oid[] NOT NULL DEFAULT '{}',
    extensions text[] NOT NULL DEFAULT '{}',
    run_id text,
    started_at timestamptz NOT NULL DEFAULT now()
);
-- types (enums, domains ...) moved back with the kept tables that use them
ALTER TABLE _pgrepl.swap ADD COLUMN IF NOT EXISTS moved_types oid[] NOT NULL DEFAULT '{}';
-- functions moved back with the kept tables whose defaults or checks call them
ALTER TABLE _pgrepl.swap ADD COLUMN IF NOT EXISTS moved_functions oid[] NOT NULL DEFAULT '{}';
-- schemas to drop in batches (pgrepl.staging): tonight's staging work after a failure, its shadow, yesterday's
-- schemas after the switch; a row stays until its schema is gone, so an interrupted cleanup is finished later
CREATE TABLE IF NOT EXISTS _pgrepl.cleanup (
    schema_name text PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('staging', 'shadow', 'previous')),
    run_id text,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
-- the size of the last night's staging copy (its tables and indexes): what the next night needs free on the disk
CREATE TABLE IF NOT EXISTS _pgrepl.staging_size (
    id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    bytes bigint NOT NULL,
    run_id text,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
