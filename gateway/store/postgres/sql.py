"""The PostgreSQL store's schema migrations and every statement it runs, each a whole named query.

Unqualified names resolve through the connection's ``search_path``, which the pool sets to the
store's schema, so one database can hold several deployments (or one schema per test).

Conventions that hold throughout:

- Times are ``timestamptz``: microseconds, like Python's datetimes, so they round-trip exactly.
- Job ids are ``COLLATE "C"``: pages are ordered by id, and byte order is the order the other
  stores (and Python's ``sorted``) use; a linguistic collation would order some ids differently.
- A job row keeps the whole ``Job.to_record()`` as ``record`` plus the columns the queries filter
  and order on. ``version`` and ``next_poll_at`` columns are authoritative: a claim changes only
  the columns (not the possibly TOASTed record), and readers overlay them on the record.
- Batches travel as parallel arrays expanded with ``unnest``: one statement, one round trip.
- ``pg_notify`` is called inside the writing transaction, so the signal goes out on commit only.
"""

from __future__ import annotations

import hashlib
from typing import Final

from gateway.store.migrations import Migration

# NOTIFY channels are the database's, not the schema's: each deployment (schema) has its own set,
# named after a digest of the schema (a channel name has at most 63 bytes; a schema name as many).
# Statements compute it from current_schema(), which the pool's search_path makes ours.
EVENTS_CHANNEL: Final = "jobgate_events_"
"""Payload: the last event id the committing transaction appended."""
DUE_CHANNEL: Final = "jobgate_due_"
"""Payload: empty. A write left a job due now (a user action, a handed-back lease)."""
KEYS_CHANNEL: Final = "jobgate_keys_"
"""Payload: the id of the API key just revoked (every replica's key cache must forget it)."""
JOBS_CHANNEL: Final = "jobgate_jobs_"
"""Payload: ids of jobs whose row a transaction changed (saved, claimed, deleted), comma-separated:
every replica's cache of encoded job snapshots drops them."""
NOTIFY_JOBS: Final = "SELECT pg_notify('jobgate_jobs_' || substr(md5(current_schema()), 1, 16), $1)"
NOTIFY_PAYLOAD_BYTES: Final = 7900
"""PostgreSQL refuses a payload of 8000 bytes or more."""


def channel(prefix: str, schema: str) -> str:
    """The schema's channel: as ``prefix || substr(md5(current_schema()), 1, 16)`` in SQL."""
    return prefix + hashlib.md5(schema.encode(), usedforsecurity=False).hexdigest()[:16]


PING: Final = "SELECT 1"

# --------------------------------------------------------------------------------------------------
# Migrations. Append new ones; never edit one that has shipped.

CREATE_JOBS: Final = """
CREATE TABLE jobs (
    id           text COLLATE "C" PRIMARY KEY,
    tenant       text NOT NULL,
    provider     text NOT NULL,
    upstream_id  text NOT NULL,
    state        text NOT NULL,
    next_poll_at timestamptz,
    version      bigint NOT NULL,
    created_at   timestamptz NOT NULL,
    labels       jsonb NOT NULL DEFAULT '{}',
    record       json NOT NULL,  -- json, not jsonb: kept as given, U+0000 and every digit included
    lease_owner  text  -- who claimed it (operators' eyes; fencing is by version); NULL once saved
)
"""
# Claims capped per provider walk this one provider at a time. Partial: finished jobs (no next
# poll) cost nothing in the indexes the poll loop lives on.
CREATE_JOBS_DUE_INDEX: Final = """
CREATE INDEX jobs_due ON jobs (provider, next_poll_at) WHERE next_poll_at IS NOT NULL
"""
# Uncapped claims and next_due order by next_poll_at across providers, which jobs_due cannot serve.
CREATE_JOBS_DUE_AT_INDEX: Final = """
CREATE INDEX jobs_due_at ON jobs (next_poll_at) WHERE next_poll_at IS NOT NULL
"""
CREATE_JOBS_LIST_INDEX: Final = "CREATE INDEX jobs_list ON jobs (tenant, id DESC)"
CREATE_JOBS_UPSTREAM_INDEX: Final = "CREATE INDEX jobs_upstream ON jobs (provider, upstream_id)"
# jsonb_path_ops: smaller and faster than the default class, and containment is all we ask of it.
CREATE_JOBS_LABELS_INDEX: Final = """
CREATE INDEX jobs_labels ON jobs USING gin (labels jsonb_path_ops)
"""
# The shared quota counts a provider's leased jobs on every acquire; leases are few, so this stays
# tiny where jobs_due would walk every job scheduled in the future.
CREATE_JOBS_LEASED_INDEX: Final = """
CREATE INDEX jobs_leased ON jobs (provider, next_poll_at) WHERE lease_owner IS NOT NULL
"""
CREATE_EVENTS: Final = """
CREATE TABLE events (
    id         bigint PRIMARY KEY,
    job_id     text COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    tenant     text NOT NULL,
    provider   text NOT NULL,
    state      text NOT NULL,
    kind       text NOT NULL,
    data       json NOT NULL,
    created_at timestamptz NOT NULL
)
"""
CREATE_EVENTS_JOB_INDEX: Final = "CREATE INDEX events_by_job ON events (job_id, id)"
# Not a sequence: nextval() hands out ids in call order but transactions commit in any order, so a
# reader could see id 8 committed, move its cursor past it, and only then see 7 appear. Appending
# takes this one row's lock until commit, so writers of events commit in id order.
CREATE_EVENT_SEQ: Final = "CREATE TABLE event_seq (last bigint NOT NULL)"
SEED_EVENT_SEQ: Final = "INSERT INTO event_seq (last) VALUES (0)"

CREATE_IDEMPOTENCY: Final = """
CREATE TABLE idempotency (
    key         text PRIMARY KEY,
    fingerprint text NOT NULL,
    state       text NOT NULL CHECK (state IN ('pending', 'done')),
    status      integer,
    body        json,
    job_id      text,
    created_at  timestamptz NOT NULL,
    finished_at timestamptz
)
"""
CREATE_IDEMPOTENCY_AGE_INDEX: Final = "CREATE INDEX idempotency_age ON idempotency (created_at)"
# Recovery points (migration 5). A key an older jobgate left pending may have reached the provider:
# it becomes ``calling`` with its lease over, so its next request reconciles instead of repeating
# the call.
DROP_IDEMPOTENCY_STATE_CHECK: Final = (
    "ALTER TABLE idempotency DROP CONSTRAINT idempotency_state_check"
)
ADD_IDEMPOTENCY_RECOVERY: Final = """
ALTER TABLE idempotency
    ADD COLUMN token text,
    ADD COLUMN lease_until timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN upstream_id text,
    ADD COLUMN called_at timestamptz,
    ADD COLUMN command json
"""
MARK_PENDING_IDEMPOTENCY_CALLING: Final = """
UPDATE idempotency SET state = 'calling', lease_until = created_at, called_at = created_at
WHERE state = 'pending'
"""
# The sweep reads only unfinished keys past their lease: a few rows among a day of finished ones.
CREATE_IDEMPOTENCY_ABANDONED_INDEX: Final = """
CREATE INDEX idempotency_abandoned ON idempotency (lease_until)
WHERE state IN ('calling', 'answered')
"""
ADD_IDEMPOTENCY_STATE_CHECK: Final = """
ALTER TABLE idempotency ADD CONSTRAINT idempotency_state_check
    CHECK (state IN ('claimed', 'calling', 'answered', 'done'))
"""

# Outbound webhooks. No foreign key to the job: the event a delivery reports has happened, and
# stopping tracking the job must not take back the notice of it. Pending rows are exactly those
# with a next_attempt_at, so the partial index serves claims and disabling alike.
CREATE_DELIVERIES: Final = """
CREATE TABLE deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        bigint NOT NULL,
    job_id          text NOT NULL,
    url             text NOT NULL,
    kind            text NOT NULL,
    payload         text NOT NULL,
    status          text NOT NULL
                    CHECK (status IN ('pending', 'delivered', 'failed', 'disabled')),
    attempts        integer NOT NULL,
    next_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    UNIQUE (event_id, url)
)
"""
CREATE_DELIVERIES_DUE_INDEX: Final = """
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE next_attempt_at IS NOT NULL
"""
CREATE_DELIVERIES_JOB_INDEX: Final = "CREATE INDEX deliveries_by_job ON deliveries (job_id, id)"
CREATE_WEBHOOK_ENDPOINTS: Final = """
CREATE TABLE webhook_endpoints (
    url         text PRIMARY KEY,
    disabled_at timestamptz NOT NULL
)
"""
CREATE_CURSORS: Final = """
CREATE TABLE cursors (
    name  text PRIMARY KEY,
    value bigint NOT NULL
)
"""
# The cadence's learned completion times (migration 7): one sketch per provider and key.
CREATE_DURATIONS: Final = """
CREATE TABLE durations (
    name       text PRIMARY KEY,
    sketch     jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""
# One token bucket per provider, shared by every replica. ``burst`` records the cap the bucket was
# last used with, for operators reading the table.
CREATE_PROVIDER_QUOTA: Final = """
CREATE TABLE provider_quota (
    provider text PRIMARY KEY,
    tokens   double precision NOT NULL,
    burst    double precision NOT NULL,
    stamp    timestamptz NOT NULL
)
"""
# Tenants (migration 6). Client API keys, by their keyed hash only: the key itself is never stored.
CREATE_API_KEYS: Final = """
CREATE TABLE api_keys (
    id           text COLLATE "C" PRIMARY KEY,
    tenant       text NOT NULL,
    scopes       text[] NOT NULL CHECK (cardinality(scopes) > 0),
    digest       text NOT NULL UNIQUE,
    prefix       text NOT NULL,
    name         text NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
)
"""
CREATE_API_KEYS_TENANT_INDEX: Final = """
CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at, id)
"""
# Claims walk the tenants that have scheduled jobs of each provider (a loose index scan: one
# descent per tenant), then take each (provider, tenant)'s soonest due jobs. It replaces jobs_due
# (provider, next_poll_at), whose one remaining reader (DUE_PROVIDERS) walks this one instead: an
# update that is not HOT writes an entry into every index, so each index costs every save.
CREATE_JOBS_DUE_BY_TENANT_INDEX: Final = """
CREATE INDEX jobs_due_by_tenant ON jobs (provider, tenant, next_poll_at)
WHERE next_poll_at IS NOT NULL
"""
DROP_JOBS_DUE_INDEX: Final = "DROP INDEX jobs_due"
# jobs_due_at (next_poll_at) serves next_due alone now, and must not serve a claim: for the soonest
# due jobs of one tenant, a planner that counts few tenants (its estimate for a tenant the walk
# names at run time) would walk it in due order and skip past another tenant's whole backlog. So
# it is partial on ``provider <> ''``, which is true of every job (a provider has a name) and
# which SELECT_NEXT_DUE states, but which no claim's "provider = <the walk's provider>" proves.
DROP_JOBS_DUE_AT_INDEX: Final = "DROP INDEX jobs_due_at"
CREATE_JOBS_DUE_AT_INDEX_V6: Final = """
CREATE INDEX jobs_due_at ON jobs (next_poll_at) WHERE next_poll_at IS NOT NULL AND provider <> ''
"""
# A tenant's limits: its unfinished jobs (a partial index, so finished jobs cost it nothing) and
# its jobs made since a moment, each an index range.
CREATE_JOBS_ACTIVE_INDEX: Final = """
CREATE INDEX jobs_active ON jobs (tenant) WHERE state IN ('queued', 'running')
"""
CREATE_JOBS_CREATED_INDEX: Final = "CREATE INDEX jobs_created ON jobs (tenant, created_at)"

MIGRATIONS: Final = (
    Migration(
        1,
        "jobs and their event log",
        (
            CREATE_JOBS,
            CREATE_JOBS_DUE_INDEX,
            CREATE_JOBS_DUE_AT_INDEX,
            CREATE_JOBS_LIST_INDEX,
            CREATE_JOBS_UPSTREAM_INDEX,
            CREATE_JOBS_LABELS_INDEX,
            CREATE_JOBS_LEASED_INDEX,
            CREATE_EVENTS,
            CREATE_EVENTS_JOB_INDEX,
            CREATE_EVENT_SEQ,
            SEED_EVENT_SEQ,
        ),
    ),
    Migration(2, "idempotency keys", (CREATE_IDEMPOTENCY, CREATE_IDEMPOTENCY_AGE_INDEX)),
    Migration(
        3,
        "webhook deliveries",
        (
            CREATE_DELIVERIES,
            CREATE_DELIVERIES_DUE_INDEX,
            CREATE_DELIVERIES_JOB_INDEX,
            CREATE_WEBHOOK_ENDPOINTS,
            CREATE_CURSORS,
        ),
    ),
    Migration(4, "shared provider quota", (CREATE_PROVIDER_QUOTA,)),
    Migration(
        5,
        "idempotency recovery points",
        (
            DROP_IDEMPOTENCY_STATE_CHECK,
            ADD_IDEMPOTENCY_RECOVERY,
            MARK_PENDING_IDEMPOTENCY_CALLING,
            ADD_IDEMPOTENCY_STATE_CHECK,
            CREATE_IDEMPOTENCY_ABANDONED_INDEX,
        ),
    ),
    Migration(
        6,
        "tenants: api keys, fair claims, tenant usage",
        (
            CREATE_API_KEYS,
            CREATE_API_KEYS_TENANT_INDEX,
            CREATE_JOBS_DUE_BY_TENANT_INDEX,
            DROP_JOBS_DUE_INDEX,
            DROP_JOBS_DUE_AT_INDEX,
            CREATE_JOBS_DUE_AT_INDEX_V6,
            CREATE_JOBS_ACTIVE_INDEX,
            CREATE_JOBS_CREATED_INDEX,
        ),
    ),
    Migration(7, "learned job durations (the cadence)", (CREATE_DURATIONS,)),
)

# --------------------------------------------------------------------------------------------------
# Running the migrations. The schema's name is this connection's search_path (a plain identifier,
# checked by the store), so none of these needs a name spliced into its text.

# Replicas starting together queue here; each migration re-reads what is applied under the lock.
LOCK_MIGRATIONS: Final = """
SELECT pg_advisory_xact_lock(
    hashtextextended('jobgate.migrate.' || current_setting('search_path'), 0)
)
"""
# Looks first: CREATE SCHEMA IF NOT EXISTS demands the CREATE privilege on the database even when
# the schema exists, and a deployment's role may have been given only its schema.
CREATE_SCHEMA: Final = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = current_setting('search_path')) THEN
        EXECUTE format('CREATE SCHEMA %I', current_setting('search_path'));
    END IF;
END
$$
"""
CREATE_SCHEMA_MIGRATIONS: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED_MIGRATIONS: Final = "SELECT version FROM schema_migrations"
RECORD_MIGRATION: Final = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"

# --------------------------------------------------------------------------------------------------
# Jobs

# The answer is (rows inserted, whether a due signal went out): one notice however many are due.
INSERT_JOBS: Final = """
WITH inserted AS (
    INSERT INTO jobs (
        id, tenant, provider, upstream_id, state, next_poll_at, version, created_at, labels, record
    )
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
        $7::bigint[], $8::timestamptz[], $9::jsonb[], $10::json[]
    )
    RETURNING next_poll_at
), woken AS (
    SELECT pg_notify('jobgate_due_' || substr(md5(current_schema()), 1, 16), '')
    FROM inserted WHERE next_poll_at <= now() LIMIT 1
)
SELECT (SELECT count(*) FROM inserted) AS written, (SELECT count(*) FROM woken) AS woken
"""
# Locks the batch's rows in id order (so two batches never deadlock) before the fences are checked
# in Python: a batch may hold consecutive versions of one job, which one UPDATE cannot chain.
LOCK_FOR_SAVE: Final = """
SELECT id, version FROM jobs WHERE id = ANY ($1::text[]) ORDER BY id FOR UPDATE
"""
SAVE_JOBS: Final = """
WITH saved AS (
    UPDATE jobs
    SET tenant = s.tenant, provider = s.provider, upstream_id = s.upstream_id, state = s.state,
        next_poll_at = s.next_poll_at, version = s.version, labels = s.labels, record = s.record,
        lease_owner = NULL
    FROM unnest(
        $1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::timestamptz[], $8::bigint[], $9::jsonb[], $10::json[]
    ) AS s (
        id, stored_version, tenant, provider, upstream_id, state, next_poll_at, version, labels,
        record
    )
    WHERE jobs.id = s.id AND jobs.version = s.stored_version
    RETURNING jobs.next_poll_at
), woken AS (
    SELECT pg_notify('jobgate_due_' || substr(md5(current_schema()), 1, 16), '')
    FROM saved WHERE next_poll_at <= now() LIMIT 1
)
SELECT (SELECT count(*) FROM saved) AS written, (SELECT count(*) FROM woken) AS woken
"""
SELECT_JOB: Final = """
SELECT record, version, next_poll_at FROM jobs WHERE id = $1 AND tenant = $2
"""
# A NULL tenant is any tenant's (an inbound callback's lookup).
SELECT_JOB_BY_UPSTREAM: Final = """
SELECT record, version, next_poll_at FROM jobs
WHERE provider = $1 AND upstream_id = $2 AND ($3::text IS NULL OR tenant = $3)
ORDER BY id DESC
LIMIT 1
"""
SELECT_JOBS: Final = """
SELECT record, version, next_poll_at FROM jobs WHERE id = ANY ($1::text[]) AND tenant = $2
"""
DELETE_JOB: Final = "DELETE FROM jobs WHERE id = $1 AND tenant = $2"

# Four listings rather than one with optional parts: a cursor bound only when present would keep
# a generic plan from using it as an index bound, and "labels @> '{}'" (no label filter) is
# estimated as selective as a real label, tempting the planner into reading the whole GIN index.
LIST_JOBS: Final = """
SELECT record, version, next_poll_at FROM jobs
WHERE tenant = $1
  AND ($2::text IS NULL OR provider = $2)
  AND ($3::text IS NULL OR state = $3)
ORDER BY id DESC
LIMIT $4
"""
LIST_JOBS_BEFORE: Final = """
SELECT record, version, next_poll_at FROM jobs
WHERE tenant = $1
  AND ($2::text IS NULL OR provider = $2)
  AND ($3::text IS NULL OR state = $3)
  AND id < $5
ORDER BY id DESC
LIMIT $4
"""
LIST_JOBS_LABELLED: Final = """
SELECT record, version, next_poll_at FROM jobs
WHERE tenant = $1
  AND ($2::text IS NULL OR provider = $2)
  AND ($3::text IS NULL OR state = $3)
  AND labels @> $5::jsonb
ORDER BY id DESC
LIMIT $4
"""
LIST_JOBS_LABELLED_BEFORE: Final = """
SELECT record, version, next_poll_at FROM jobs
WHERE tenant = $1
  AND ($2::text IS NULL OR provider = $2)
  AND ($3::text IS NULL OR state = $3)
  AND labels @> $5::jsonb
  AND id < $6
ORDER BY id DESC
LIMIT $4
"""

# The same walks, as ids and versions: a reader holding encoded snapshots decodes no record.
_VERSIONS = ("SELECT record, version, next_poll_at", "SELECT id, version")
LIST_VERSIONS: Final = LIST_JOBS.replace(*_VERSIONS)
LIST_VERSIONS_BEFORE: Final = LIST_JOBS_BEFORE.replace(*_VERSIONS)
LIST_VERSIONS_LABELLED: Final = LIST_JOBS_LABELLED.replace(*_VERSIONS)
LIST_VERSIONS_LABELLED_BEFORE: Final = LIST_JOBS_LABELLED_BEFORE.replace(*_VERSIONS)


# A claim is one statement that picks due jobs, locks them and leases them.
#
# Tenants take turns (``gateway.store.fair`` states the rule; the embedded stores follow it in
# Python): each tenant's soonest due job, then each one's second, and so on, soonest first within a
# turn. The work is bounded by tenants times the limit, never by the backlog: ``pairs`` walks the
# distinct (provider, tenant) pairs with scheduled jobs in jobs_due_by_tenant (a loose index scan,
# one descent per pair), a lateral reads each pair's soonest $2 due rows (``offered``, no locks),
# and row_number() numbers each tenant's turns. Only then are rows locked: in turn order, FOR
# UPDATE SKIP LOCKED, until $2 are held. So a claim locks (and writes) only what it takes (a lock
# is a write: locking every row offered would cost tenants times the limit in writes), and a
# replica claiming beside another skips the rows the other holds and takes the next offered ones;
# one that finds every offered row held comes back short and claims again on its next tick. (The
# runner's claims on PostgreSQL go through CLAIM_WITHIN_QUOTA, where the buckets' locks already
# keep two replicas' claims of one provider apart.) The final ORDER BY returns the jobs soonest
# first, which an UPDATE's RETURNING does not keep.
CLAIM_DUE: Final = """
WITH RECURSIVE pairs AS (
    (
        SELECT provider, tenant FROM jobs
        WHERE next_poll_at IS NOT NULL
        ORDER BY provider, tenant
        LIMIT 1
    )
    UNION ALL
    SELECT later.provider, later.tenant
    FROM pairs CROSS JOIN LATERAL (
        SELECT provider, tenant FROM jobs
        WHERE next_poll_at IS NOT NULL AND (provider, tenant) > (pairs.provider, pairs.tenant)
        ORDER BY provider, tenant
        LIMIT 1
    ) AS later
), offered AS (
    SELECT job.id, job.tenant, job.next_poll_at
    FROM pairs CROSS JOIN LATERAL (
        SELECT id, tenant, next_poll_at FROM jobs
        WHERE jobs.provider = pairs.provider AND jobs.tenant = pairs.tenant
          AND next_poll_at IS NOT NULL AND next_poll_at <= $1
        ORDER BY next_poll_at
        LIMIT $2
    ) AS job
), turns AS (
    SELECT id, next_poll_at,
           row_number() OVER (PARTITION BY tenant ORDER BY next_poll_at, id) AS turn
    FROM offered
), taken AS MATERIALIZED (
    SELECT locked.id, offer.next_poll_at
    FROM (SELECT * FROM turns ORDER BY turn, next_poll_at, id) AS offer
    CROSS JOIN LATERAL (
        SELECT id FROM jobs
        WHERE jobs.id = offer.id AND next_poll_at IS NOT NULL AND next_poll_at <= $1
        FOR UPDATE SKIP LOCKED
    ) AS locked
    LIMIT $2
), claimed AS (
    UPDATE jobs SET next_poll_at = $3, version = jobs.version + 1, lease_owner = $4
    FROM taken
    WHERE jobs.id = taken.id
    RETURNING jobs.id, jobs.record, jobs.version, jobs.next_poll_at,
              taken.next_poll_at AS was_due
)
SELECT record, version, next_poll_at FROM claimed ORDER BY was_due, id
"""
# The same, capped per provider ($5 providers, $6 caps, each at most $2). The walk goes through
# the tenants of each named provider only, and a pair offers at most its provider's cap. Each
# provider's cap goes to its offered jobs in turn order (``let_through``: locked there, so a
# replica beside us hands the place to the next in turn order); the turns are then counted again
# among those and the first $2 leased. Rows let through but cut by $2 stay due, unchanged; their
# locks end with this statement.
CLAIM_DUE_PER_PROVIDER: Final = """
WITH RECURSIVE cap AS (
    SELECT * FROM unnest($5::text[], $6::bigint[]) AS cap (provider, n)
), walk AS (
    SELECT cap.provider, cap.n, (
               SELECT tenant FROM jobs
               WHERE jobs.provider = cap.provider AND next_poll_at IS NOT NULL
               ORDER BY tenant
               LIMIT 1
           ) AS tenant
    FROM cap
    UNION ALL
    SELECT walk.provider, walk.n, (
               SELECT tenant FROM jobs
               WHERE jobs.provider = walk.provider AND next_poll_at IS NOT NULL
                 AND jobs.tenant > walk.tenant
               ORDER BY tenant
               LIMIT 1
           )
    FROM walk
    WHERE walk.tenant IS NOT NULL
), offered AS (
    SELECT job.id, job.provider, job.tenant, job.next_poll_at
    FROM walk CROSS JOIN LATERAL (
        SELECT id, provider, tenant, next_poll_at FROM jobs
        WHERE jobs.provider = walk.provider AND jobs.tenant = walk.tenant
          AND next_poll_at IS NOT NULL AND next_poll_at <= $1
        ORDER BY next_poll_at
        LIMIT walk.n
    ) AS job
    WHERE walk.tenant IS NOT NULL
), turns AS MATERIALIZED (
    SELECT offered.*,
           row_number() OVER (PARTITION BY tenant ORDER BY next_poll_at, id) AS turn
    FROM offered
), let_through AS MATERIALIZED (
    SELECT job.id, job.tenant, job.next_poll_at
    FROM cap CROSS JOIN LATERAL (
        SELECT locked.id, offer.tenant, offer.next_poll_at
        FROM (
            SELECT * FROM turns WHERE turns.provider = cap.provider
            ORDER BY turn, next_poll_at, id
        ) AS offer
        CROSS JOIN LATERAL (
            SELECT id FROM jobs
            WHERE jobs.id = offer.id AND next_poll_at IS NOT NULL AND next_poll_at <= $1
            FOR UPDATE SKIP LOCKED
        ) AS locked
        LIMIT cap.n
    ) AS job
), taken AS (
    SELECT id, next_poll_at FROM (
        SELECT id, next_poll_at,
               row_number() OVER (PARTITION BY tenant ORDER BY next_poll_at, id) AS turn
        FROM let_through
    ) AS turns
    ORDER BY turn, next_poll_at, id
    LIMIT $2
), claimed AS (
    UPDATE jobs SET next_poll_at = $3, version = jobs.version + 1, lease_owner = $4
    FROM taken
    WHERE jobs.id = taken.id
    RETURNING jobs.id, jobs.record, jobs.version, jobs.next_poll_at,
              taken.next_poll_at AS was_due
)
SELECT record, version, next_poll_at FROM claimed ORDER BY was_due, id
"""
# ``provider <> ''``: jobs_due_at's predicate (see its migration for why it has one).
SELECT_NEXT_DUE: Final = """
SELECT min(next_poll_at) FROM jobs WHERE next_poll_at IS NOT NULL AND provider <> ''
"""
# A scan, not a maintained counter table: a counts row per (provider, state) would be a hot row
# every replica's saves queue on. The gauge is read every scrape interval, not per request.
COUNT_BY_STATE: Final = "SELECT provider, state, count(*) AS n FROM jobs GROUP BY provider, state"
# One statement, so both parts are of one snapshot; each an index range (jobs_active, jobs_created).
TENANT_USAGE: Final = """
SELECT (
           SELECT count(*) FROM jobs WHERE tenant = $1 AND state IN ('queued', 'running')
       ) AS active,
       count(*) AS recent,
       min(created_at) AS oldest_recent
FROM jobs
WHERE tenant = $1 AND created_at >= $2
"""

# --------------------------------------------------------------------------------------------------
# Events

# Takes $1's length of ids from the counter (holding its row lock until commit), inserts the
# events numbered in array order, and signals the last id on commit. The answer is that last id.
APPEND_EVENTS: Final = """
WITH numbered AS (
    UPDATE event_seq SET last = last + cardinality($1::text[]) RETURNING last
), appended AS (
    INSERT INTO events (id, job_id, tenant, provider, state, kind, data, created_at)
    SELECT numbered.last - cardinality($1::text[]) + e.n,
           e.job_id, e.tenant, e.provider, e.state, e.kind, e.data, e.created_at
    FROM numbered,
         unnest(
             $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::json[],
             $7::timestamptz[]
         ) WITH ORDINALITY AS e (job_id, tenant, provider, state, kind, data, created_at, n)
)
SELECT last, pg_notify('jobgate_events_' || substr(md5(current_schema()), 1, 16), last::text)
FROM numbered
"""
LAST_EVENT_ID: Final = "SELECT last FROM event_seq"
# A NULL tenant is every tenant (the feed, the webhook tailer). Either way the walk is by id (the
# primary key), the tenant a filter, so one generic plan serves both.
EVENTS_AFTER: Final = """
SELECT id, job_id, tenant, provider, state, kind, data, created_at FROM events
WHERE id > $1 AND ($2::text IS NULL OR tenant = $2)
  AND (cardinality($3::text[]) = 0 OR provider = ANY ($3::text[]))
  AND (cardinality($4::text[]) = 0 OR state = ANY ($4::text[]))
ORDER BY id
LIMIT $5
"""
# Apart from EVENTS_AFTER so that the job's (job_id, id) index is used even by a generic plan.
EVENTS_AFTER_OF_JOB: Final = """
SELECT id, job_id, tenant, provider, state, kind, data, created_at FROM events
WHERE job_id = $6 AND id > $1 AND ($2::text IS NULL OR tenant = $2)
  AND (cardinality($3::text[]) = 0 OR provider = ANY ($3::text[]))
  AND (cardinality($4::text[]) = 0 OR state = ANY ($4::text[]))
ORDER BY id
LIMIT $5
"""

# --------------------------------------------------------------------------------------------------
# Idempotency keys

# The unique key decides between two requests on two replicas: the loser's insert does nothing
# (after waiting for the winner's transaction, if it is still open). The same statement takes over
# an unfinished claim whose lease is over; the row lock makes one of two racing takeovers win.
CLAIM_IDEMPOTENCY: Final = """
INSERT INTO idempotency AS i
    (key, fingerprint, state, created_at, token, lease_until, job_id, command)
VALUES ($1, $2, 'claimed', $3, $4, $5, $6, $7::json)
ON CONFLICT (key) DO UPDATE
SET token = excluded.token,
    lease_until = excluded.lease_until,
    job_id = coalesce(i.job_id, excluded.job_id)
WHERE i.state <> 'done' AND i.fingerprint = excluded.fingerprint AND i.lease_until <= $3
RETURNING state, job_id, upstream_id, called_at
"""
SELECT_IDEMPOTENCY: Final = """
SELECT fingerprint, state, status, body, job_id, created_at, lease_until
FROM idempotency WHERE key = $1
"""
ABANDONED_IDEMPOTENCY: Final = """
SELECT key, fingerprint, command FROM idempotency
WHERE state IN ('calling', 'answered') AND lease_until <= $1 AND command IS NOT NULL
ORDER BY created_at, key
LIMIT $2
"""
ADVANCE_IDEMPOTENCY: Final = """
UPDATE idempotency
SET state = $3,
    called_at = CASE WHEN $3 = 'calling' THEN coalesce(called_at, $4) ELSE called_at END,
    upstream_id = coalesce($5, upstream_id),
    lease_until = coalesce($6, lease_until)
WHERE key = $1 AND token = $2 AND state <> 'done'
"""
FINISH_IDEMPOTENCY: Final = """
UPDATE idempotency SET state = 'done', status = $3, body = $4::json, job_id = $5, finished_at = $6
WHERE key = $1 AND token = $2 AND state <> 'done'
"""
RELEASE_IDEMPOTENCY: Final = (
    "DELETE FROM idempotency WHERE key = $1 AND token = $2 AND state <> 'done'"
)
PURGE_IDEMPOTENCY: Final = "DELETE FROM idempotency WHERE created_at < $1"

# --------------------------------------------------------------------------------------------------
# Client API keys

API_KEY_COLUMNS: Final = """
id, tenant, scopes, digest, prefix, name, created_at, expires_at, revoked_at, last_used_at
"""
INSERT_API_KEY: Final = f"""
INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""
SELECT_API_KEY: Final = f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = $1"
SELECT_API_KEY_BY_DIGEST: Final = f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE digest = $1"
LIST_API_KEYS: Final = f"SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
LIST_TENANT_API_KEYS: Final = f"""
SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant = $1 ORDER BY created_at, id
"""
# The signal goes out on commit only, to every replica, whose key caches must forget the key.
REVOKE_API_KEY: Final = """
WITH revoked AS (
    UPDATE api_keys SET revoked_at = $2
    WHERE id = $1 AND revoked_at IS NULL AND ($3::text IS NULL OR tenant = $3)
    RETURNING id
), signalled AS (
    SELECT pg_notify('jobgate_keys_' || substr(md5(current_schema()), 1, 16), id) FROM revoked
)
SELECT (SELECT count(*) FROM revoked) AS revoked, (SELECT count(*) FROM signalled) AS signalled
"""
# One statement for the batch. The rows are locked in id order first (``locked``), so two replicas
# touching the same keys never deadlock; a time older than the one stored changes nothing.
TOUCH_API_KEYS: Final = """
WITH used AS (
    SELECT * FROM unnest($1::text[], $2::timestamptz[]) AS u (id, used_at)
), locked AS (
    SELECT api_keys.id FROM api_keys JOIN used ON used.id = api_keys.id
    ORDER BY api_keys.id
    FOR UPDATE OF api_keys
)
UPDATE api_keys SET last_used_at = used.used_at
FROM used JOIN locked ON locked.id = used.id
WHERE api_keys.id = used.id
  AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < used.used_at)
"""

# --------------------------------------------------------------------------------------------------
# Webhook deliveries and the tailer's cursor

GET_CURSOR: Final = "SELECT value FROM cursors WHERE name = $1"
SELECT_DURATIONS: Final = "SELECT name, sketch::text FROM durations"
# Rows first, then locked: two replicas merging into one sketch (even its first merge) fold one
# after the other, and neither is lost.
ENSURE_DURATIONS: Final = """
INSERT INTO durations (name, sketch) SELECT unnest($1::text[]), '{}'::jsonb
ON CONFLICT (name) DO NOTHING
"""
LOCK_DURATIONS: Final = """
SELECT name, sketch::text FROM durations WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE
"""
UPDATE_DURATION: Final = (
    "UPDATE durations SET sketch = $2::jsonb, updated_at = now() WHERE name = $1"
)
SET_CURSOR: Final = """
INSERT INTO cursors (name, value) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET value = excluded.value
"""
# ORDER BY the array position, so ids (the order of list_deliveries) follow the caller's order.
ENQUEUE_DELIVERIES: Final = """
INSERT INTO deliveries (
    event_id, job_id, url, kind, payload, status, attempts, next_attempt_at, created_at, updated_at
)
SELECT d.event_id, d.job_id, d.url, d.kind, d.payload, 'pending', 0, d.due_at, d.due_at, d.due_at
FROM unnest(
    $1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[]
) WITH ORDINALITY AS d (event_id, job_id, url, kind, payload, due_at, n)
WHERE NOT EXISTS (SELECT 1 FROM webhook_endpoints AS w WHERE w.url = d.url)
ORDER BY d.n
ON CONFLICT (event_id, url) DO NOTHING
"""
CLAIM_DUE_DELIVERIES: Final = """
WITH due AS (
    SELECT id, next_attempt_at FROM deliveries
    WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $1
    ORDER BY next_attempt_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE deliveries SET next_attempt_at = $3
    FROM due
    WHERE deliveries.id = due.id
    RETURNING deliveries.id, deliveries.event_id, deliveries.job_id, deliveries.url,
              deliveries.kind, deliveries.payload, deliveries.status, deliveries.attempts,
              deliveries.next_attempt_at, deliveries.last_status, deliveries.last_error,
              deliveries.created_at, deliveries.updated_at, due.next_attempt_at AS was_due
)
SELECT id, event_id, job_id, url, kind, payload, status, attempts, next_attempt_at, last_status,
       last_error, created_at, updated_at
FROM leased
ORDER BY was_due, id
"""
# Fenced by the claim: only a pending row still leased until $8 changes (finished rows have no
# next_attempt_at, so they never match).
FINISH_DELIVERY: Final = """
UPDATE deliveries
SET status = $2, attempts = $3, next_attempt_at = $4, last_status = $5, last_error = $6,
    updated_at = $7
WHERE id = $1 AND next_attempt_at = $8
RETURNING url
"""
DISABLE_ENDPOINT: Final = """
INSERT INTO webhook_endpoints (url, disabled_at) VALUES ($1, $2) ON CONFLICT (url) DO NOTHING
"""
DISABLE_PENDING_DELIVERIES: Final = """
UPDATE deliveries SET status = 'disabled', next_attempt_at = NULL, updated_at = $2
WHERE next_attempt_at IS NOT NULL AND url = $1
"""
NEXT_DELIVERY_DUE: Final = """
SELECT min(next_attempt_at) FROM deliveries WHERE next_attempt_at IS NOT NULL
"""
ENDPOINT_DISABLED: Final = "SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE url = $1)"
LIST_DELIVERIES: Final = """
SELECT id, event_id, job_id, url, kind, payload, status, attempts, next_attempt_at, last_status,
       last_error, created_at, updated_at
FROM deliveries
ORDER BY id
LIMIT $1
"""
LIST_JOB_DELIVERIES: Final = """
SELECT id, event_id, job_id, url, kind, payload, status, attempts, next_attempt_at, last_status,
       last_error, created_at, updated_at
FROM deliveries
WHERE job_id = $1
ORDER BY id
LIMIT $2
"""
PURGE_DELIVERIES: Final = """
DELETE FROM deliveries WHERE next_attempt_at IS NULL AND updated_at < $1
"""

# --------------------------------------------------------------------------------------------------
# The shared provider quota

# Creates the bucket full on first use, and in every case locks the row until commit and answers
# its tokens with the provider's leases still running at $4 (the upsert is what takes the lock).
LOCK_QUOTA: Final = """
INSERT INTO provider_quota AS q (provider, tokens, burst, stamp) VALUES ($1, $2, $2, $3)
ON CONFLICT (provider) DO UPDATE SET burst = excluded.burst
RETURNING q.tokens, q.stamp,
          (SELECT count(*) FROM jobs
           WHERE jobs.provider = $1 AND lease_owner IS NOT NULL AND next_poll_at > $4) AS leased
"""
SAVE_QUOTA: Final = "UPDATE provider_quota SET tokens = $2, stamp = $3 WHERE provider = $1"

# A quota claim, in four steps. First, outside any transaction: which of the providers have a job
# due at all, so that idle providers cost no lock and no write. Each provider's walk goes through
# its tenants with scheduled jobs in jobs_due_by_tenant (one descent each, as the claims walk
# them) and stops at the first tenant with a job due.
DUE_PROVIDERS: Final = """
WITH RECURSIVE walk AS (
    SELECT wanted.provider, (
               SELECT tenant FROM jobs
               WHERE jobs.provider = wanted.provider AND next_poll_at IS NOT NULL
               ORDER BY tenant
               LIMIT 1
           ) AS tenant
    FROM unnest($1::text[]) AS wanted (provider)
    UNION ALL
    SELECT walk.provider, (
               SELECT tenant FROM jobs
               WHERE jobs.provider = walk.provider AND next_poll_at IS NOT NULL
                 AND jobs.tenant > walk.tenant
               ORDER BY tenant
               LIMIT 1
           )
    FROM walk
    WHERE walk.tenant IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM jobs
        WHERE jobs.provider = walk.provider AND jobs.tenant = walk.tenant
          AND next_poll_at IS NOT NULL AND next_poll_at <= $2
    )
)
SELECT DISTINCT provider FROM walk
WHERE tenant IS NOT NULL AND EXISTS (
    SELECT 1 FROM jobs
    WHERE jobs.provider = walk.provider AND jobs.tenant = walk.tenant
      AND next_poll_at IS NOT NULL AND next_poll_at <= $2
)
"""
# Then, in one transaction: the buckets locked (an upsert locks the rows it meets, and makes a full
# bucket for a provider never seen before), in one order so that two replicas never deadlock.
# Another replica's claim of the same providers now waits for ours to commit...
LOCK_QUOTAS: Final = """
INSERT INTO provider_quota AS q (provider, tokens, burst, stamp)
SELECT provider, burst, burst, $3 FROM unnest($1::text[], $2::float8[]) AS w (provider, burst)
ORDER BY provider
ON CONFLICT (provider) DO UPDATE SET burst = excluded.burst
"""
# A claim need not wait for its commit to reach the disk: if the server loses it in a crash, the
# jobs were never leased (and are claimed again) and the tokens never spent. Job states and
# events are saved by other transactions, which keep the full guarantee.
ASYNC_COMMIT: Final = "SET LOCAL synchronous_commit = off"
# ...and, in a statement that starts after the locks (so it sees every lease committed before
# them), each bucket refilled, the grant taken within its tokens and the deployment's free
# concurrency, that many due jobs leased, and the bucket charged for exactly the jobs leased.
# The stamp never moves back: a replica whose clock lags cannot refill the same seconds twice.
# A provider's grant goes to its tenants' jobs in turn order, as in CLAIM_DUE_PER_PROVIDER (the
# buckets' locks already keep two replicas' claims of one provider apart).
CLAIM_WITHIN_QUOTA: Final = """
WITH RECURSIVE wanted AS (
    SELECT * FROM unnest($4::text[], $5::int[], $6::float8[], $7::float8[], $8::int[])
        AS w (provider, want, rate, burst, concurrency)
), bucket AS (
    SELECT wanted.provider, wanted.want, wanted.concurrency,
           least(
               wanted.burst,
               q.tokens + greatest(0.0, extract(epoch FROM $1 - q.stamp)::float8) * wanted.rate
           ) AS tokens,
           greatest(q.stamp, $1) AS stamp,
           (SELECT count(*) FROM jobs
            WHERE jobs.provider = wanted.provider AND lease_owner IS NOT NULL
              AND next_poll_at > $1) AS leased
    FROM wanted JOIN provider_quota AS q ON q.provider = wanted.provider
), granted AS (
    SELECT provider, tokens, stamp,
           greatest(0, least(want, floor(tokens)::int, concurrency - leased::int)) AS n
    FROM bucket
), walk AS (
    SELECT granted.provider, granted.n, (
               SELECT tenant FROM jobs
               WHERE jobs.provider = granted.provider AND next_poll_at IS NOT NULL
               ORDER BY tenant
               LIMIT 1
           ) AS tenant
    FROM granted
    WHERE granted.n > 0
    UNION ALL
    SELECT walk.provider, walk.n, (
               SELECT tenant FROM jobs
               WHERE jobs.provider = walk.provider AND next_poll_at IS NOT NULL
                 AND jobs.tenant > walk.tenant
               ORDER BY tenant
               LIMIT 1
           )
    FROM walk
    WHERE walk.tenant IS NOT NULL
), offered AS (
    SELECT job.id, job.provider, job.tenant, job.next_poll_at
    FROM walk CROSS JOIN LATERAL (
        SELECT id, provider, tenant, next_poll_at FROM jobs
        WHERE jobs.provider = walk.provider AND jobs.tenant = walk.tenant
          AND next_poll_at IS NOT NULL AND next_poll_at <= $1
        ORDER BY next_poll_at
        LIMIT walk.n
    ) AS job
    WHERE walk.tenant IS NOT NULL
), turns AS MATERIALIZED (
    SELECT offered.*,
           row_number() OVER (PARTITION BY tenant ORDER BY next_poll_at, id) AS turn
    FROM offered
), taken AS MATERIALIZED (
    SELECT job.id, job.next_poll_at
    FROM granted CROSS JOIN LATERAL (
        SELECT locked.id, offer.next_poll_at
        FROM (
            SELECT * FROM turns WHERE turns.provider = granted.provider
            ORDER BY turn, next_poll_at, id
        ) AS offer
        CROSS JOIN LATERAL (
            SELECT id FROM jobs
            WHERE jobs.id = offer.id AND next_poll_at IS NOT NULL AND next_poll_at <= $1
            FOR UPDATE SKIP LOCKED
        ) AS locked
        LIMIT granted.n
    ) AS job
    WHERE granted.n > 0
), claimed AS (
    UPDATE jobs SET next_poll_at = $2, version = jobs.version + 1, lease_owner = $3
    FROM taken
    WHERE jobs.id = taken.id
    RETURNING jobs.id, jobs.provider, jobs.record, jobs.version, jobs.next_poll_at,
              taken.next_poll_at AS was_due
), charged AS (
    UPDATE provider_quota AS q
    SET tokens = granted.tokens
                 - (SELECT count(*) FROM claimed WHERE claimed.provider = granted.provider),
        stamp = granted.stamp
    FROM granted
    WHERE q.provider = granted.provider
)
SELECT record, version, next_poll_at FROM claimed ORDER BY was_due, id
"""
