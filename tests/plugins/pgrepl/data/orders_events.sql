-- A schema shaped like public sample shops (orders, customers, events): enums, a domain, a sequence shared by two
-- tables without OWNED BY, a composite primary key, a table partitioned by range with three partitions, views
-- and materialized views over the tables BACKUP_MODE keeps. Used by tests/plugins/pgrepl/test_table_modes.py.
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped');
CREATE DOMAIN amount AS numeric(12, 2) CHECK (VALUE >= 0);
CREATE SEQUENCE shared_number_seq;  -- not OWNED BY: customers and orders draw from it
-- functions called by a default and a check constraint of the kept orders, and by a replaced table
CREATE FUNCTION default_channel() RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'web' $$;
CREATE FUNCTION is_positive(numeric) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT $1 >= 0 $$;

CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    number bigint NOT NULL DEFAULT nextval('shared_number_seq'),
    channel text DEFAULT default_channel()
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id),
    status order_status NOT NULL DEFAULT 'new',
    total amount NOT NULL,
    number bigint NOT NULL DEFAULT nextval('shared_number_seq') UNIQUE,
    created_at timestamptz NOT NULL DEFAULT '2024-01-01',
    channel text NOT NULL DEFAULT default_channel() CHECK (is_positive(length(channel)))
);
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE INDEX orders_status_idx ON orders (status) WHERE status <> 'shipped';
-- composite key; an FK to the kept orders
CREATE TABLE order_lines (
    order_id bigint NOT NULL REFERENCES orders (id),
    line_no integer NOT NULL,
    sku text NOT NULL,
    qty integer NOT NULL CHECK (qty > 0),
    PRIMARY KEY (order_id, line_no)
);
-- a replaced table using the enum and the domain the kept orders use
CREATE TABLE order_notes (
    id serial PRIMARY KEY,
    status order_status NOT NULL,
    refund amount,
    note text
);
CREATE TABLE events (
    id bigserial,
    occurred_at timestamptz NOT NULL,
    order_id bigint,
    kind text NOT NULL,
    payload jsonb,
    PRIMARY KEY (occurred_at, id)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE events_2024_01 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');
CREATE TABLE events_2024_02 PARTITION OF events FOR VALUES FROM ('2024-02-01') TO ('2024-03-01');
CREATE TABLE events_2024_03 PARTITION OF events FOR VALUES FROM ('2024-03-01') TO ('2024-04-01');
CREATE INDEX events_kind_idx ON events (kind);
CREATE INDEX events_2024_01_order_idx ON events_2024_01 (order_id);  -- an index of one partition only

CREATE VIEW order_totals AS
    SELECT customer_id, count(*) AS orders, sum(total) AS total FROM orders GROUP BY customer_id;
CREATE VIEW recent_events AS SELECT id, occurred_at, kind FROM events WHERE occurred_at >= '2024-02-15';
CREATE MATERIALIZED VIEW daily_events AS
    SELECT date_trunc('day', occurred_at) AS day, kind, count(*) AS n FROM events GROUP BY 1, 2;
CREATE MATERIALIZED VIEW customer_orders AS
    SELECT c.id AS customer_id, c.name, o.status, count(*) AS n
      FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY 1, 2, 3;
-- a materialized view over a materialized view over a kept table
CREATE MATERIALIZED VIEW paid_customers AS SELECT customer_id, name FROM customer_orders WHERE status = 'paid';
-- a materialized view over replaced tables only (refreshed by the restore as usual)
CREATE MATERIALIZED VIEW note_counts AS SELECT status, count(*) AS n FROM order_notes GROUP BY status;

INSERT INTO customers (name) SELECT 'customer ' || i FROM generate_series(1, 20) i;
INSERT INTO orders (customer_id, status, total)
    SELECT 1 + i % 20, (ARRAY['new', 'paid', 'shipped'])[1 + i % 3]::order_status, i * 1.5
      FROM generate_series(1, 200) i;
INSERT INTO order_lines SELECT o.id, l, 'sku-' || l, l FROM orders o, generate_series(1, 2) l;
INSERT INTO order_notes (status, refund, note) SELECT 'paid', i, 'note ' || i FROM generate_series(1, 10) i;
INSERT INTO events (occurred_at, order_id, kind, payload)
    SELECT timestamptz '2024-01-01' + i * interval '7 hours', 1 + i % 200, (ARRAY['view', 'click'])[1 + i % 2],
           jsonb_build_object('i', i)
      FROM generate_series(0, 250) i;
REFRESH MATERIALIZED VIEW daily_events;
REFRESH MATERIALIZED VIEW customer_orders;
REFRESH MATERIALIZED VIEW paid_customers;
REFRESH MATERIALIZED VIEW note_counts;
