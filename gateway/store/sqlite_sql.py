"""The SQLite store's schema and its named SQL statements (procrastinate style).

Kept apart from ``gateway/store/sqlite.py`` so the store's logic reads without the SQL text in
the way; every statement the store runs is a constant here.
"""

from __future__ import annotations

from typing import Final

from gateway.store.migrations import Migration

# --------------------------------------------------------------------------------------------------
# Schema: numbered migrations (``gateway.store.migrations``, as PostgreSQL's), each applied in one
# transaction; the database's ``PRAGMA user_version`` records that 1..n have run. Append new
# migrations; never edit old ones.

CREATE_JOBS: Final = """
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    provider     TEXT NOT NULL,
    state        TEXT NOT NULL,
    next_poll_at INTEGER,
    version      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    labels       TEXT NOT NULL DEFAULT '{}', -- canonical JSON: compared to skip label rewrites
    record       TEXT NOT NULL
)
"""
# Partial: finished jobs (no next poll) cost nothing in the index the poll loop lives on.
CREATE_JOBS_DUE_INDEX: Final = """
CREATE INDEX jobs_due ON jobs (next_poll_at) WHERE next_poll_at IS NOT NULL
"""
# Serves the newest-first listing; provider and state ride along so that filtering on them and
# counting by them read only the index, never the records.
CREATE_JOBS_LIST_INDEX: Final = """
CREATE INDEX jobs_list ON jobs (tenant, id, provider, state)
"""
# Claims are capped per provider (a claim must be pollable at once, within the provider's tokens).
CREATE_JOBS_DUE_BY_PROVIDER_INDEX: Final = """
CREATE INDEX IF NOT EXISTS jobs_due_by_provider ON jobs (provider, next_poll_at)
WHERE next_poll_at IS NOT NULL
"""
CREATE_JOB_LABELS: Final = """
CREATE TABLE job_labels (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
) WITHOUT ROWID
"""
CREATE_JOB_LABELS_INDEX: Final = """
CREATE INDEX job_labels_lookup ON job_labels (key, value, job_id)
"""
# AUTOINCREMENT, so that ids are never reused even after the newest events are deleted: they are
# SSE ids, and a client resuming from Last-Event-ID must never be handed an old number again.
CREATE_EVENTS: Final = """
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    tenant     TEXT NOT NULL,
    provider   TEXT NOT NULL,
    state      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL
)
"""
CREATE_EVENTS_JOB_INDEX: Final = """
CREATE INDEX events_by_job ON events (job_id, id)
"""
# Kept up to date by every write, in the same transaction, so that the jobs gauge reads a few rows
# instead of scanning a million-entry index while every other call queues behind it.
CREATE_JOB_COUNTS: Final = """
CREATE TABLE job_counts (
    provider TEXT NOT NULL,
    state    TEXT NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (provider, state)
) WITHOUT ROWID
"""
CREATE_IDEMPOTENCY: Final = """
CREATE TABLE idempotency (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    status      INTEGER,
    body        TEXT,
    job_id      TEXT,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
)
"""
CREATE_IDEMPOTENCY_AGE_INDEX: Final = """
CREATE INDEX idempotency_age ON idempotency (created_at)
"""
# Recovery points (migration 5). SQLite cannot change a CHECK constraint in place, so the table is
# rebuilt. A key an older jobgate left pending may have reached the provider: it becomes
# ``calling`` with its lease over, so its next request reconciles instead of repeating the call.
CREATE_IDEMPOTENCY_V5: Final = """
CREATE TABLE idempotency_v5 (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('claimed', 'calling', 'answered', 'done')),
    status      INTEGER,
    body        TEXT,
    job_id      TEXT,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER,
    token       TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0,
    upstream_id TEXT,
    called_at   INTEGER,
    command     TEXT
)
"""
COPY_IDEMPOTENCY_V5: Final = """
INSERT INTO idempotency_v5
    (key, fingerprint, state, status, body, job_id, created_at, finished_at, lease_until, called_at)
SELECT key, fingerprint, CASE state WHEN 'done' THEN 'done' ELSE 'calling' END, status, body,
       job_id, created_at, finished_at, created_at, created_at
FROM idempotency
"""
DROP_IDEMPOTENCY: Final = "DROP TABLE idempotency"
# The sweep reads only unfinished keys past their lease: a few rows among a day of finished ones.
CREATE_IDEMPOTENCY_ABANDONED_INDEX: Final = """
CREATE INDEX idempotency_abandoned ON idempotency (lease_until)
WHERE state IN ('calling', 'answered')
"""
RENAME_IDEMPOTENCY_V5: Final = "ALTER TABLE idempotency_v5 RENAME TO idempotency"
# An inbound callback names only the upstream job. A column, not an index on the record's JSON:
# the upstream id never changes, so no save rewrites this index (an expression over ``record``
# would be recomputed on every save).
ADD_JOBS_UPSTREAM: Final = "ALTER TABLE jobs ADD COLUMN upstream_id TEXT"
FILL_JOBS_UPSTREAM: Final = "UPDATE jobs SET upstream_id = json_extract(record, '$.upstream_id')"
CREATE_JOBS_UPSTREAM_INDEX: Final = """
CREATE INDEX IF NOT EXISTS jobs_upstream ON jobs (provider, upstream_id)
"""
# Outbound webhooks. A delivery holds its own payload and has no foreign key to its job: the event
# it reports has happened, and stopping tracking the job must not take back the notice of it.
# Pending rows are exactly those with a next_attempt_at, so the partial index serves claims and
# disabling alike while finished rows cost it nothing.
# IF NOT EXISTS: a file rolled back to an older schema by hand still migrates forward.
CREATE_DELIVERIES: Final = """
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    event_id        INTEGER NOT NULL,
    job_id          TEXT NOT NULL,
    url             TEXT NOT NULL,
    kind            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL
                    CHECK (status IN ('pending', 'delivered', 'failed', 'disabled')),
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (event_id, url)
)
"""
CREATE_DELIVERIES_DUE_INDEX: Final = """
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at)
WHERE next_attempt_at IS NOT NULL
"""
CREATE_DELIVERIES_JOB_INDEX: Final = """
CREATE INDEX IF NOT EXISTS deliveries_by_job ON deliveries (job_id, id)
"""
CREATE_WEBHOOK_ENDPOINTS: Final = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    url         TEXT PRIMARY KEY,
    disabled_at INTEGER NOT NULL
) WITHOUT ROWID
"""
CREATE_CURSORS: Final = """
CREATE TABLE IF NOT EXISTS cursors (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID
"""
# The cadence's learned completion times (migration 7): one sketch per provider and key, as JSON.
CREATE_DURATIONS: Final = """
CREATE TABLE IF NOT EXISTS durations (
    name       TEXT PRIMARY KEY,
    sketch     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID
"""
# Tenants (migration 6). Client API keys, by their keyed hash only: the key itself is never stored.
# Scopes are a JSON array of their names.
CREATE_API_KEYS: Final = """
CREATE TABLE IF NOT EXISTS api_keys (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    digest       TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    name         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER
)
"""
CREATE_API_KEYS_TENANT_INDEX: Final = """
CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys (tenant, created_at, id)
"""
# A claim walks the tenants that have scheduled jobs of each provider (one seek each), then each
# tenant's soonest due jobs; (provider, next_poll_at) alone is a prefix no query needs any more.
CREATE_JOBS_DUE_BY_TENANT_INDEX: Final = """
CREATE INDEX IF NOT EXISTS jobs_due_by_tenant ON jobs (provider, tenant, next_poll_at)
WHERE next_poll_at IS NOT NULL
"""
DROP_JOBS_DUE_BY_PROVIDER_INDEX: Final = "DROP INDEX IF EXISTS jobs_due_by_provider"
# A tenant's limits: its unfinished jobs and its jobs made since a moment, each an index range. A
# save rewrites neither unless it changes the state (SQLite updates only the indexes whose columns
# an UPDATE sets).
CREATE_JOBS_ACTIVE_INDEX: Final = """
CREATE INDEX IF NOT EXISTS jobs_active ON jobs (tenant, state)
WHERE state IN ('queued', 'running')
"""
CREATE_JOBS_CREATED_INDEX: Final = """
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (tenant, created_at)
"""

MIGRATIONS: Final = (
    Migration(
        1,
        "jobs, labels, events, counts, idempotency keys",
        (
            CREATE_JOBS,
            CREATE_JOBS_DUE_INDEX,
            CREATE_JOBS_LIST_INDEX,
            CREATE_JOB_LABELS,
            CREATE_JOB_LABELS_INDEX,
            CREATE_EVENTS,
            CREATE_EVENTS_JOB_INDEX,
            CREATE_JOB_COUNTS,
            CREATE_IDEMPOTENCY,
            CREATE_IDEMPOTENCY_AGE_INDEX,
        ),
    ),
    Migration(
        2,
        "jobs by upstream id",
        (ADD_JOBS_UPSTREAM, FILL_JOBS_UPSTREAM, CREATE_JOBS_UPSTREAM_INDEX),
    ),
    Migration(
        3,
        "webhook deliveries, endpoints, cursors",
        (
            CREATE_DELIVERIES,
            CREATE_DELIVERIES_DUE_INDEX,
            CREATE_DELIVERIES_JOB_INDEX,
            CREATE_WEBHOOK_ENDPOINTS,
            CREATE_CURSORS,
        ),
    ),
    Migration(4, "due jobs by provider (capped claims)", (CREATE_JOBS_DUE_BY_PROVIDER_INDEX,)),
    Migration(
        5,
        "idempotency recovery points",
        (
            CREATE_IDEMPOTENCY_V5,
            COPY_IDEMPOTENCY_V5,
            DROP_IDEMPOTENCY,
            RENAME_IDEMPOTENCY_V5,
            CREATE_IDEMPOTENCY_AGE_INDEX,
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
            DROP_JOBS_DUE_BY_PROVIDER_INDEX,
            CREATE_JOBS_ACTIVE_INDEX,
            CREATE_JOBS_CREATED_INDEX,
        ),
    ),
    Migration(7, "learned job durations (the cadence)", (CREATE_DURATIONS,)),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

# --------------------------------------------------------------------------------------------------
# Named statements

INSERT_JOB: Final = """
INSERT INTO jobs (
    id, tenant, provider, state, next_poll_at, version, created_at, labels, record, upstream_id
)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
# save_many reads the batch's rows first (under the write lock) and then writes each row with the
# narrowest statement that fits: SQLite rewrites an index entry whenever its column is in the SET
# list, so leaving ``state`` out when it did not change spares a random write in jobs_list.
SELECT_FOR_SAVE: Final = """
SELECT jobs.rowid, jobs.id, jobs.version, jobs.state, jobs.labels
FROM json_each(?) AS wanted JOIN jobs ON jobs.id = wanted.value
"""
UPDATE_JOB: Final = """
UPDATE jobs SET next_poll_at = ?, version = ?, record = ? WHERE rowid = ? AND version = ?
"""
UPDATE_JOB_AND_STATE: Final = """
UPDATE jobs SET state = ?, labels = ?, next_poll_at = ?, version = ?, record = ?
WHERE rowid = ? AND version = ?
"""
INSERT_LABEL: Final = "INSERT INTO job_labels (job_id, key, value) VALUES (?, ?, ?)"
DELETE_LABELS: Final = "DELETE FROM job_labels WHERE job_id = ?"
SELECT_JOB: Final = "SELECT record FROM jobs WHERE id = ? AND tenant = ?"
# No ORDER BY: with one, the planner may walk jobs_list (tenant, id) newest first instead of this
# exact lookup. The rows are few (an upstream job adopted a few times at most); Python picks one.
# A NULL tenant is any tenant's.
SELECT_JOBS_BY_UPSTREAM: Final = """
SELECT id, record FROM jobs
WHERE provider = :provider AND upstream_id = :upstream_id
  AND (:tenant IS NULL OR tenant = :tenant)
"""
DELETE_JOB: Final = "DELETE FROM jobs WHERE id = ? AND tenant = ? RETURNING provider, state"
# A claim, in steps inside one transaction (the write lock held from the start): the providers
# with scheduled jobs (when the claim names none), the tenants of each (a loose index scan: one
# seek per tenant), each (provider, tenant)'s soonest due jobs read from the index alone, and,
# once Python has picked which (``gateway.store.fair``), the records of those. So the work grows
# with tenants times the limit, never with the backlog.
SCHEDULED_PROVIDERS: Final = """
WITH RECURSIVE walk (provider) AS (
    SELECT (
        SELECT provider FROM jobs INDEXED BY jobs_due_by_tenant
        WHERE next_poll_at IS NOT NULL
        ORDER BY provider LIMIT 1
    )
    UNION ALL
    SELECT (
        SELECT provider FROM jobs INDEXED BY jobs_due_by_tenant
        WHERE next_poll_at IS NOT NULL AND provider > walk.provider
        ORDER BY provider LIMIT 1
    )
    FROM walk WHERE walk.provider IS NOT NULL
)
SELECT provider FROM walk WHERE provider IS NOT NULL
"""
SCHEDULED_TENANTS: Final = """
WITH RECURSIVE walk (tenant) AS (
    SELECT (
        SELECT tenant FROM jobs INDEXED BY jobs_due_by_tenant
        WHERE provider = :provider AND next_poll_at IS NOT NULL
        ORDER BY tenant LIMIT 1
    )
    UNION ALL
    SELECT (
        SELECT tenant FROM jobs INDEXED BY jobs_due_by_tenant
        WHERE provider = :provider AND next_poll_at IS NOT NULL AND tenant > walk.tenant
        ORDER BY tenant LIMIT 1
    )
    FROM walk WHERE walk.tenant IS NOT NULL
)
SELECT tenant FROM walk WHERE tenant IS NOT NULL
"""
SELECT_DUE_OF_TENANT: Final = """
SELECT next_poll_at, rowid FROM jobs INDEXED BY jobs_due_by_tenant
WHERE provider = ? AND tenant = ? AND next_poll_at IS NOT NULL AND next_poll_at <= ?
ORDER BY next_poll_at
LIMIT ?
"""
SELECT_RECORDS: Final = """
SELECT jobs.rowid, jobs.record FROM json_each(?) AS wanted JOIN jobs ON jobs.rowid = wanted.value
"""
LEASE_JOB: Final = "UPDATE jobs SET next_poll_at = ?, version = ?, record = ? WHERE rowid = ?"
SELECT_NEXT_DUE: Final = "SELECT MIN(next_poll_at) FROM jobs WHERE next_poll_at IS NOT NULL"
# An exclusive store's next_due with claims held in memory: the due index walked from its start,
# past the rows those claims hold (read lazily; there are at most a batch or two of them).
SELECT_DUE_ROWS: Final = """
SELECT next_poll_at, rowid FROM jobs INDEXED BY jobs_due
WHERE next_poll_at IS NOT NULL
ORDER BY next_poll_at
"""
ADD_JOB_COUNTS: Final = """
INSERT INTO job_counts (provider, state, n) VALUES (?, ?, ?)
ON CONFLICT (provider, state) DO UPDATE SET n = n + excluded.n
"""
COUNT_BY_STATE: Final = "SELECT provider, state, n FROM job_counts WHERE n > 0"
# A tenant's usage, in one statement (so of one moment), each part from its own index: jobs_active
# holds only unfinished jobs, jobs_created is in creation order within the tenant. INDEXED BY, as
# jobs_list (tenant, id, provider, state) could serve the first too, reading all the tenant's jobs.
TENANT_USAGE: Final = """
SELECT (
           SELECT count(*) FROM jobs INDEXED BY jobs_active
           WHERE tenant = :tenant AND state IN ('queued', 'running')
       ),
       count(*),
       min(created_at)
FROM jobs INDEXED BY jobs_created
WHERE tenant = :tenant AND created_at >= :since
"""

# Listing walks newest-first and stops after one page. Without labels it walks jobs_list; with
# labels it walks the first label's (key, value, job_id) index instead (CROSS JOIN fixes that
# order), so a page costs about its own size whether the label is rare or on every job.
# A page before a cursor; without one the cursor is "~", which sorts after every job id. Optional
# filters are NULL when unused. Provider and state ride in jobs_list, so they filter index entries.
LIST_JOBS: Final = """
SELECT jobs.record FROM jobs
WHERE jobs.tenant = :tenant AND jobs.id < :before
  AND (:provider IS NULL OR jobs.provider = :provider)
  AND (:state IS NULL OR jobs.state = :state)
ORDER BY jobs.id DESC
LIMIT :limit
"""
# With labels, the walk starts from the first label's index entries (far fewer rows than the
# tenant's jobs); every other label (``:others``, a JSON object) must be on the job too.
LIST_JOBS_BY_LABELS: Final = """
SELECT jobs.record FROM job_labels AS first CROSS JOIN jobs ON jobs.id = first.job_id
WHERE first.key = :key AND first.value = :value AND jobs.tenant = :tenant
  AND first.job_id < :before
  AND (:provider IS NULL OR jobs.provider = :provider)
  AND (:state IS NULL OR jobs.state = :state)
  AND NOT EXISTS (
      SELECT 1 FROM json_each(:others) AS wanted
      WHERE NOT EXISTS (
          SELECT 1 FROM job_labels AS label
          WHERE label.job_id = jobs.id AND label.key = wanted.key AND label.value = wanted.value
      )
  )
ORDER BY first.job_id DESC
LIMIT :limit
"""
NO_CURSOR: Final = "~"
SELECT_JOBS: Final = """
SELECT record FROM jobs WHERE id IN (SELECT value FROM json_each(?)) AND tenant = ?
"""

LAST_EVENT_ID: Final = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
INSERT_EVENT: Final = """
INSERT INTO events (id, job_id, tenant, provider, state, kind, data, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
# ``:providers`` and ``:states`` are JSON arrays; an empty one does not filter. A NULL tenant is
# every tenant (the feed, the webhook tailer). Either way the walk is by id, the tenant a filter.
EVENTS_AFTER: Final = """
SELECT id, job_id, tenant, provider, state, kind, data, created_at FROM events
WHERE id > :after AND (:tenant IS NULL OR tenant = :tenant)
  AND (:providers = '[]' OR provider IN (SELECT value FROM json_each(:providers)))
  AND (:states = '[]' OR state IN (SELECT value FROM json_each(:states)))
ORDER BY id
LIMIT :limit
"""
# One job's log: walks events_by_job (job_id, id) instead of the whole log.
EVENTS_AFTER_JOB: Final = """
SELECT id, job_id, tenant, provider, state, kind, data, created_at FROM events
WHERE job_id = :job_id AND id > :after AND (:tenant IS NULL OR tenant = :tenant)
  AND (:providers = '[]' OR provider IN (SELECT value FROM json_each(:providers)))
  AND (:states = '[]' OR state IN (SELECT value FROM json_each(:states)))
ORDER BY id
LIMIT :limit
"""

CLAIM_IDEMPOTENCY: Final = """
INSERT OR IGNORE INTO idempotency
    (key, fingerprint, state, created_at, token, lease_until, job_id, command)
VALUES (?, ?, 'claimed', ?, ?, ?, ?, ?)
"""
SELECT_IDEMPOTENCY: Final = """
SELECT fingerprint, state, status, body, job_id, created_at, lease_until, upstream_id, called_at
FROM idempotency WHERE key = ?
"""
TAKE_OVER_IDEMPOTENCY: Final = """
UPDATE idempotency SET token = ?, lease_until = ?, job_id = coalesce(job_id, ?) WHERE key = ?
"""
ADVANCE_IDEMPOTENCY: Final = """
UPDATE idempotency
SET state = :phase,
    called_at = CASE WHEN :phase = 'calling' THEN coalesce(called_at, :now) ELSE called_at END,
    upstream_id = coalesce(:upstream_id, upstream_id),
    lease_until = coalesce(:lease_until, lease_until)
WHERE key = :key AND token = :token AND state <> 'done'
"""
FINISH_IDEMPOTENCY: Final = """
UPDATE idempotency SET state = 'done', status = ?, body = ?, job_id = ?, finished_at = ?
WHERE key = ? AND token = ? AND state <> 'done'
"""
RELEASE_IDEMPOTENCY: Final = (
    "DELETE FROM idempotency WHERE key = ? AND token = ? AND state <> 'done'"
)
ABANDONED_IDEMPOTENCY: Final = """
SELECT key, fingerprint, command FROM idempotency
WHERE state IN ('calling', 'answered') AND lease_until <= ? AND command IS NOT NULL
ORDER BY created_at, key
LIMIT ?
"""
# With the file locked to one process, a claim found unfinished at open belongs to a process that
# has died: its lease is over now, whatever the clock says, so a retry need not wait it out.
END_IDEMPOTENCY_LEASES: Final = "UPDATE idempotency SET lease_until = 0 WHERE state <> 'done'"
PURGE_IDEMPOTENCY: Final = "DELETE FROM idempotency WHERE created_at < ?"

GET_CURSOR: Final = "SELECT value FROM cursors WHERE name = ?"
SELECT_DURATIONS: Final = "SELECT name, sketch FROM durations"
SELECT_DURATION: Final = "SELECT sketch FROM durations WHERE name = ?"
UPSERT_DURATION: Final = """
INSERT INTO durations (name, sketch, updated_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET sketch = excluded.sketch, updated_at = excluded.updated_at
"""
SET_CURSOR: Final = """
INSERT INTO cursors (name, value) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET value = excluded.value
"""
DELIVERY_COLUMNS: Final = """
id, event_id, job_id, url, kind, payload, status, attempts, next_attempt_at, last_status,
last_error, created_at, updated_at
"""
INSERT_DELIVERY: Final = """
INSERT OR IGNORE INTO deliveries (
    event_id, job_id, url, kind, payload, status, attempts, next_attempt_at, created_at, updated_at
)
SELECT ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?
WHERE NOT EXISTS (SELECT 1 FROM webhook_endpoints WHERE url = ?)
"""
SELECT_DUE_DELIVERIES: Final = f"""
SELECT {DELIVERY_COLUMNS} FROM deliveries
WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ?
ORDER BY next_attempt_at, id
LIMIT ?
"""
LEASE_DELIVERY: Final = "UPDATE deliveries SET next_attempt_at = ? WHERE id = ?"
FINISH_DELIVERY: Final = """
UPDATE deliveries
SET status = ?, attempts = ?, next_attempt_at = ?, last_status = ?, last_error = ?, updated_at = ?
WHERE id = ? AND next_attempt_at = ?
RETURNING url
"""
DISABLE_ENDPOINT: Final = "INSERT OR IGNORE INTO webhook_endpoints (url, disabled_at) VALUES (?, ?)"
DISABLE_PENDING_DELIVERIES: Final = """
UPDATE deliveries SET status = 'disabled', next_attempt_at = NULL, updated_at = ?
WHERE next_attempt_at IS NOT NULL AND url = ?
"""
NEXT_DELIVERY_DUE: Final = (
    "SELECT MIN(next_attempt_at) FROM deliveries WHERE next_attempt_at IS NOT NULL"
)
ENDPOINT_DISABLED: Final = "SELECT 1 FROM webhook_endpoints WHERE url = ?"
LIST_DELIVERIES: Final = f"SELECT {DELIVERY_COLUMNS} FROM deliveries ORDER BY id LIMIT ?"
LIST_JOB_DELIVERIES: Final = f"""
SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE job_id = ? ORDER BY id LIMIT ?
"""
PURGE_DELIVERIES: Final = "DELETE FROM deliveries WHERE next_attempt_at IS NULL AND updated_at < ?"

API_KEY_COLUMNS: Final = """
id, tenant, scopes, digest, prefix, name, created_at, expires_at, revoked_at, last_used_at
"""
INSERT_API_KEY: Final = f"""
INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
SELECT_API_KEY: Final = f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = ?"
SELECT_API_KEY_BY_DIGEST: Final = f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE digest = ?"
LIST_API_KEYS: Final = f"SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
LIST_TENANT_API_KEYS: Final = f"""
SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant = ? ORDER BY created_at, id
"""
REVOKE_API_KEY: Final = """
UPDATE api_keys SET revoked_at = :now
WHERE id = :id AND revoked_at IS NULL AND (:tenant IS NULL OR tenant = :tenant)
"""
TOUCH_API_KEY: Final = """
UPDATE api_keys SET last_used_at = :used
WHERE id = :id AND (last_used_at IS NULL OR last_used_at < :used)
"""
