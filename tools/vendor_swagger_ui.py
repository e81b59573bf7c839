"""Fetch Swagger UI from the npm registry into ``gateway/web/static/swagger-ui/`` for ``/docs``.

Run by ``make install`` (so by ``make run`` and ``make test``), not committed: the files are
megabytes of minified JavaScript whose source is the npm package. The version and the tarball's
integrity are pinned here, so the bytes served are the ones reviewed, and a tarball that differs
is refused. Only the few files ``/docs`` serves are kept, with the package's licence.

Swagger UI rather than another viewer: it is the one that reads OpenAPI 3.2 (the version of
``/openapi.json``: the SSE streams need ``itemSchema``) and it has try-it. npm rather than PyPI:
the PyPI bundles carry Swagger UI 4 or an early 5, which refuse a 3.2 document.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

PACKAGE = "swagger-ui-dist"
VERSION = "5.35.0"
INTEGRITY = (
    "sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8"
    "CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ=="
)
FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE", "NOTICE")
TARGET = Path(__file__).resolve().parents[1] / "gateway" / "web" / "static" / "swagger-ui"
STAMP = ".version"
TIMEOUT = 60


def registry() -> str:
    # The same override npm honours (npm reads it in either case), for a mirror.
    override = os.environ.get("NPM_CONFIG_REGISTRY") or os.environ.get(
        "npm_config_registry"  # noqa: SIM112 (npm's own spelling, as npm documents it)
    )
    return (override or "https://registry.npmjs.org/").rstrip("/")


def verify(blob: bytes) -> None:
    algorithm, _, expected = INTEGRITY.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, blob).digest()).decode()
    if digest != expected:
        raise SystemExit(
            f"vendor_swagger_ui: {PACKAGE}@{VERSION} does not match its pinned integrity "
            f"({algorithm}); refusing it"
        )


def fetch() -> bytes:
    url = f"{registry()}/{PACKAGE}/-/{PACKAGE}-{VERSION}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            blob: bytes = answer.read()
    except OSError as exc:
        raise SystemExit(f"vendor_swagger_ui: cannot download {url}: {exc}") from exc
    return blob


def unpack(blob: bytes, into: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as archive:
        for name in FILES:
            try:
                member = archive.extractfile(f"package/{name}")
            except KeyError:
                member = None
            if member is None:
                raise SystemExit(f"vendor_swagger_ui: {name} is missing from the package")
            (into / name).write_bytes(member.read())
    (into / STAMP).write_text(json.dumps({"package": PACKAGE, "version": VERSION}) + "\n")


def installed() -> bool:
    try:
        stamp = json.loads((TARGET / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("version") == VERSION and all((TARGET / name).is_file() for name in FILES)


def main() -> int:
    if installed():
        return 0
    blob = fetch()
    verify(blob)
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    # Unpacked beside the target and swapped in whole: an interrupted run leaves the old copy.
    staging = Path(tempfile.mkdtemp(prefix=".swagger-ui-", dir=TARGET.parent))
    try:
        unpack(blob, staging)
        staging.chmod(
            0o755
        )  # mkdtemp's 0700 would hide the files from a server run as another user
        if TARGET.exists():
            shutil.rmtree(TARGET)
        staging.rename(TARGET)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"vendor_swagger_ui: {PACKAGE}@{VERSION} -> {TARGET}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
