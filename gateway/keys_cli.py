"""``jobgate keys create|list|revoke|hash``: key management against the configured store.

It works before the gateway runs and while it serves: SQLite is opened without the gateway's
exclusive lock (WAL lets both write), PostgreSQL is shared anyway. A revocation reaches a running
gateway at once on PostgreSQL (NOTIFY) and within ``auth.cache_seconds`` on SQLite. The key itself
goes to standard output alone, so ``JOBGATE_API_KEY=$(jobgate keys create ...)`` captures it; the
rest goes to standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from gateway.access import Access, AuthNotConfigured, load_secret
from gateway.auth import KeyHasher, looks_like_key, parse_duration, parse_scopes
from gateway.errors import ServiceError
from gateway.settings import Settings
from gateway.store.base import JobStore, StoreUnavailable


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke client API keys")
    keys.add_argument("--config", help="a TOML file (default: config/sandbox.toml)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key (printed once, stored as a hash)")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    create.add_argument(
        "--scopes", required=True, help="comma-separated: jobs:read, jobs:write, admin"
    )
    create.add_argument("--expires", help="lifetime, e.g. 90d, 12h (default: until revoked)")
    create.add_argument("--name", default="", help="what the key is for")
    create.add_argument("--json", action="store_true", help="print the key's record as JSON")
    listing = actions.add_parser("list", help="every key (never the keys themselves)")
    listing.add_argument("--tenant", help="only this tenant's")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    actions.add_parser(
        "hash", help="read a key on standard input, print its digest (for auth.keys in a config)"
    )
    keys.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from gateway.logs import configure_logging, secrets_of
    from gateway.settings import load_settings

    try:
        settings = load_settings(args.config)
        # Log lines (the store's, the key's) go to standard error with the secrets masked, so
        # standard output holds nothing but what the action prints (the key, for create).
        configure_logging(settings.log.format, settings.log.level, secrets=secrets_of(settings))
        if args.action == "hash":
            return _hash(settings)
        return asyncio.run(_manage(settings, args))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'settings'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        return _fail(f"invalid configuration: {problems}", 2)
    except (ValueError, AuthNotConfigured) as exc:
        return _fail(str(exc), 2)
    except StoreUnavailable as exc:
        return _fail(f"cannot open the store: {exc}", 1)
    except ServiceError as exc:
        return _fail(f"{exc.code}: {exc.message}", 1)


def _fail(message: str, code: int) -> int:
    print(f"jobgate keys: {message}", file=sys.stderr)
    return code


def _hash(settings: Settings) -> int:
    key = sys.stdin.readline().strip()
    if not looks_like_key(key):
        return _fail("standard input must hold one jobgate key (jg_ and 43 characters)", 2)
    print(KeyHasher(load_secret(settings)).digest(key))
    return 0


def _open_store(settings: Settings) -> JobStore:
    if settings.store.kind == "memory":
        raise ValueError("store.kind is memory: keys live in the gateway process; use /v1/keys")
    if settings.store.kind == "sqlite":
        from gateway.store.sqlite import SqliteStore

        path = Path(settings.store.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Not exclusive: the gateway may be serving from the same file.
        return SqliteStore(path)
    from gateway.web.app import make_store

    return make_store(settings)


async def _manage(settings: Settings, args: argparse.Namespace) -> int:
    store = _open_store(settings)
    await store.open()
    try:
        # The configured keys too: revoking one is refused with the reason (remove it from the
        # configuration), not "no usable key" for a key that `keys list` shows.
        access = Access(
            store,
            KeyHasher(load_secret(settings)),
            required=True,
            configured=[key.to_key() for key in settings.auth.keys],
        )
        if args.action == "create":
            expires = parse_duration(args.expires) if args.expires else None
            key, plaintext = await access.create(
                args.tenant, parse_scopes([args.scopes]), name=args.name, expires_in=expires
            )
            if args.json:
                print(json.dumps({**key.public(), "key": plaintext}))
            else:
                print(plaintext)
                print(
                    f"created {key.id} for tenant {key.tenant} "
                    f"({', '.join(sorted(s.value for s in key.scopes))}); "
                    "the key above is shown only this once",
                    file=sys.stderr,
                )
            return 0
        if args.action == "list":
            stored = await store.list_api_keys(args.tenant)
            configured = [k.to_key() for k in settings.auth.keys]
            keys = [k for k in configured if args.tenant in (None, k.tenant)] + stored
            if args.json:
                for key in keys:
                    print(json.dumps(key.public()))
            else:
                _table([key.public() for key in keys])
            return 0
        key = await access.revoke(args.key_id)
        print(f"revoked {key.id} (tenant {key.tenant}, {key.prefix}...)", file=sys.stderr)
        return 0
    finally:
        await store.close()


def _table(rows: list[dict[str, object]]) -> None:
    columns = ("id", "tenant", "name", "prefix", "scopes", "expires_at", "revoked_at")
    cells = [
        [", ".join(v) if isinstance((v := row[c]), list) else str(v or "-") for c in columns]
        for row in rows
    ]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
