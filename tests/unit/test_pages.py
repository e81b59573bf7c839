"""``gateway/web/pages.py``: the jobs page's files, their types, headers and revalidation."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.web import pages
from gateway.web.pages import UI_DIR, Assets, setup_pages


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    setup_pages(app)
    async with TestClient(TestServer(app)) as session:
        yield session


async def test_root_redirects_to_the_page_keeping_the_query(
    client: TestClient[web.Request, web.Application],
) -> None:
    reply = await client.get("/", allow_redirects=False)
    assert reply.status == 302
    assert reply.headers["Location"] == "/ui/"
    reply = await client.get("/?provider=pulse&label=team:ui", allow_redirects=False)
    assert reply.headers["Location"] == "/ui/?provider=pulse&label=team:ui"
    # Escapes stay escaped: a decoded %23 would start a fragment and cut the query short.
    reply = await client.get("/?label=team:a%23b&x=%26", allow_redirects=False)
    assert reply.headers["Location"] == "/ui/?label=team:a%23b&x=%26"


async def test_the_page_and_its_files_have_their_types_and_headers(
    client: TestClient[web.Request, web.Application],
) -> None:
    expected = {
        "/ui/": "text/html",
        "/ui/app.js": "text/javascript",
        "/ui/api.js": "text/javascript",
        "/ui/format.js": "text/javascript",
        "/ui/style.css": "text/css",
    }
    for path, kind in expected.items():
        reply = await client.get(path)
        assert reply.status == 200, path
        assert reply.content_type == kind, path
        assert reply.charset == "utf-8", path
        csp = reply.headers["Content-Security-Policy"]
        for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"):
            assert directive in csp, (path, csp)
        assert "unsafe" not in csp
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["Cache-Control"] == "no-cache"
        assert re.fullmatch(r'"[0-9a-f]{32}"', reply.headers["ETag"])


async def test_a_known_etag_is_304_and_a_changed_one_is_200(
    client: TestClient[web.Request, web.Application],
) -> None:
    etag = (await client.get("/ui/app.js")).headers["ETag"]
    reply = await client.get("/ui/app.js", headers={"If-None-Match": etag})
    assert reply.status == 304
    assert reply.headers["ETag"] == etag
    assert await reply.read() == b""
    reply = await client.get("/ui/app.js", headers={"If-None-Match": f'W/{etag}, "other"'})
    assert reply.status == 304
    reply = await client.get("/ui/app.js", headers={"If-None-Match": '"stale"'})
    assert reply.status == 200


@pytest.mark.parametrize(
    "name",
    ["nope.js", "..%2Fpages.py", ".hidden.js", "App.js", "app.js.map", "README", "x.py"],
)
async def test_only_the_pages_files_are_served(
    client: TestClient[web.Request, web.Application], name: str
) -> None:
    reply = await client.get(f"/ui/{name}")
    assert reply.status == 404


def test_a_file_changed_on_disk_is_read_again(tmp_path: Path) -> None:
    assets = Assets(tmp_path)
    path = tmp_path / "app.js"
    path.write_text("one")
    first = assets.get("app.js")
    assert first is not None
    assert first.body == b"one"
    assert assets.get("app.js") is first  # unchanged: the cached copy
    path.write_text("two!")
    os.utime(path, ns=(first.stamp[0] + 1_000_000, first.stamp[0] + 1_000_000))
    second = assets.get("app.js")
    assert second is not None
    assert second.body == b"two!"
    assert second.etag != first.etag
    assert assets.get("gone.js") is None


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """Offline: every file the page names is one of its own, and none names another origin."""
    html = (UI_DIR / "index.html").read_text()
    named = re.findall(r'(?:src|href)="([^"#][^"]*)"', html)
    assert "app.js" in named
    assert "style.css" in named
    for ref in named:
        if ref.startswith("data:"):
            continue
        assert "//" not in ref, ref
        assert ":" not in ref, ref
        assert pages.ASSETS.get(ref) is not None, ref
    for path in UI_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://(?!example\.com)", text), path.name
        assert "@import" not in text, path.name
        if path.suffix == ".js":
            for module in re.findall(r'from "([^"]+)"', text):
                assert module.startswith("./"), (path.name, module)
                assert pages.ASSETS.get(module.removeprefix("./")) is not None, module
            assert "innerHTML" not in text, path.name
            assert "insertAdjacentHTML" not in text, path.name
