"""The ``jobgate`` command. To run the gateway: ``serve``, ``sandbox``, ``demo`` and ``keys``.
As its client (``jobgate.cli``): ``submit``, ``adopt``, ``watch``, ``jobs``, ``get``, ``result``,
``cancel``, ``rerun``, ``continue`` and ``delete``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from aiohttp import web


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from gateway.access import AuthNotConfigured
    from gateway.blobs import BlobError
    from gateway.logs import configure_logging, secrets_of
    from gateway.settings import load_settings
    from gateway.store.base import StoreUnavailable
    from gateway.web.app import create_app
    from gateway.web.server import serve

    try:
        settings = load_settings(args.config)
    except ValidationError as exc:
        # Without the inputs: a rejected section may hold the DSN or a key.
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'settings'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        print(f"jobgate: invalid configuration: {problems}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"jobgate: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log.format, settings.log.level, secrets=secrets_of(settings))
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    # The address decides the auth default (open only on loopback), however it was given.
    settings = settings.model_copy(
        update={"server": settings.server.model_copy(update={"host": host, "port": port})}
    )
    from gateway.settings import is_loopback

    if not settings.auth_required() and not is_loopback(host):
        print(
            f"jobgate: refusing to serve on {host} with auth off: anyone who can reach it could "
            "read and cancel every job; set JOBGATE_AUTH__REQUIRED=true and create keys with "
            "`jobgate keys create`",
            file=sys.stderr,
        )
        return 2
    ready = f"jobgate: serving on http://{host}:{port}  (docs: http://{host}:{port}/docs)"
    if settings.auth_required():
        ready += (
            "\njobgate: API keys required (create one: jobgate keys create --tenant T --scopes S)"
        )
    else:
        ready += (
            "\njobgate: auth is OFF: no API key needed, every caller is tenant 'default' with "
            "every scope (set JOBGATE_AUTH__REQUIRED=true to require keys)"
        )
    try:
        # The line is printed once the site listens, so it never precedes a failed start.
        serve(create_app(settings), host, port, on_ready=lambda: print(ready, flush=True))
    except AuthNotConfigured as exc:
        print(f"jobgate: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        # An operator's problem (a wrong DSN, a server down, a file in use), not a bug: one line.
        print(f"jobgate: cannot open the store: {exc}", file=sys.stderr)
        return 1
    except BlobError as exc:
        # The same for the vault's directory (a volume not mounted, no permission).
        print(f"jobgate: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # The same for a listening socket (the API's or the embedded sandbox's): a port in use, an
        # address this host does not have. aiohttp's message names the address.
        print(f"jobgate: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _sandbox(args: argparse.Namespace) -> int:
    from adapters.registry import PROVIDERS
    from adapters.sandboxes import create_sandbox_app
    from adapters.simulator import SandboxSettings
    from gateway.logs import configure_logging

    configure_logging("console", "INFO")
    settings = SandboxSettings(speed=args.speed, faults=args.faults, seed=args.seed)
    print(f"jobgate sandbox on http://{args.host}:{args.port} (speed x{args.speed:g})")
    for name, spec in sorted(PROVIDERS.items()):
        print(f"  {name:<9} http://{args.host}:{args.port}{spec.prefix}")
    web.run_app(
        create_sandbox_app(settings), host=args.host, port=args.port, print=None, access_log=None
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return asyncio.run(run_demo(args.url, timeout=args.timeout))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jobgate",
        description="One gateway for asynchronous job APIs. Run it: serve, sandbox, demo, keys. "
        "Use it: submit, adopt, watch, jobs, get, result, cancel, rerun, continue, delete "
        "(JOBGATE_URL, JOBGATE_API_KEY). `jobgate COMMAND --help` says more.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="a TOML file (default: config/sandbox.toml)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.set_defaults(func=_serve)

    sandbox = sub.add_parser("sandbox", help="serve the four provider sandboxes on one port")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8700)
    sandbox.add_argument("--speed", type=float, default=1.0, help="time acceleration factor")
    sandbox.add_argument(
        "--faults", type=float, default=0.0, help="share of status calls that misbehave (0..1)"
    )
    sandbox.add_argument("--seed", type=int, default=None, help="seed for the fault generator")
    sandbox.set_defaults(func=_sandbox)

    demo = sub.add_parser("demo", help="submit one job per provider and watch them finish")
    demo.add_argument(
        "--url",
        default=os.environ.get("JOBGATE_URL") or "http://127.0.0.1:8080",
        help="the gateway (default: $JOBGATE_URL, else http://127.0.0.1:8080)",
    )
    demo.add_argument("--timeout", type=float, default=180.0, help="give up after this long")
    demo.set_defaults(func=_demo)

    from gateway.keys_cli import add_parser

    add_parser(sub)

    from jobgate.cli import add_client_commands

    add_client_commands(sub)

    args = parser.parse_args(argv)
    if getattr(args, "faults", 0.0) and not 0.0 <= args.faults <= 1.0:
        parser.error("--faults must be between 0 and 1")
    if getattr(args, "speed", 1.0) <= 0:
        parser.error("--speed must be positive")
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): nothing of ours failed, so no traceback. Standard output
        # is pointed at /dev/null so that the interpreter's own flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
