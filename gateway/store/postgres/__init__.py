"""The PostgreSQL store, for several gateway replicas sharing one database.

``PostgresStore`` is the :class:`~gateway.store.base.JobStore`; its ``quota`` attribute is the
:class:`PostgresQuota` shared by every replica. ``open()`` raises ``StoreUnavailable`` (the one in
``gateway.store.base``, re-exported here) when the server cannot be reached, with a message that
never holds the password (``redact_dsn``).
"""

from gateway.store.base import StoreUnavailable
from gateway.store.postgres.dsn import redact_dsn
from gateway.store.postgres.quota import PostgresQuota
from gateway.store.postgres.store import PostgresStore

__all__ = ["PostgresQuota", "PostgresStore", "StoreUnavailable", "redact_dsn"]
