"""The jobs page (``/ui/``) in a real browser against a real gateway and the sandboxes.

A job submitted through the API appears at the top of the table and goes to ``succeeded``
without a reload; its view shows its events, downloads its result (the same bytes as
``GET /result``), pages a paged result, shows an action's problem in the alert region, cancels a
running pulse job, fits a 360 px screen; with keys required the page asks for one and streams with
a stream token, never with the key in a URL. A stream refused for good (400, 403, 404) stops and
says so, with no token renewed behind it; a token asked for with a key replaced since is never
used; a stream the page reopens resumes from the last id it was told. Screenshots go to
``test-artifacts/``.

Every wait is on the page's DOM with a bounded timeout; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.auth import Scope
from gateway.web.sse import SSE_KEY
from gateway.web.state import COMPONENTS_KEY
from tests.integration.browser import PageErrors, chromium, no_horizontal_scroll, screenshot
from tests.integration.conftest import Stack, StackFactory

if TYPE_CHECKING:
    from playwright.async_api import ViewportSize

pytestmark = pytest.mark.integration

EXTRACT = {"url": "https://example.com", "singlePage": True}
WAIT = 20_000  # ms: the longest any single expectation may take
NARROW: ViewportSize = {"width": 360, "height": 780}
WIDE: ViewportSize = {"width": 1366, "height": 900}

# Records every state each row shows, so a transition the page made between two of the test's
# looks is still seen.
WATCH_STATES = """() => {
  window.__marker = Math.random();
  window.__seen = {};
  const note = (row) => {
    const id = row.dataset.jobId, state = row.dataset.state;
    if (!id || !state) return;
    const seen = (window.__seen[id] ??= []);
    if (seen[seen.length - 1] !== state) seen.push(state);
  };
  new MutationObserver((changes) => {
    for (const change of changes) {
      const target = change.target.closest ? change.target.closest('tr[data-job-id]') : null;
      if (target) note(target);
      for (const node of change.addedNodes) if (node.matches?.('tr[data-job-id]')) note(node);
    }
  }).observe(document.getElementById('jobs-body'),
             {childList: true, subtree: true, attributes: true, attributeFilter: ['data-state']});
  return window.__marker;
}"""


def expect_() -> Any:
    from playwright.async_api import expect

    return expect


async def result_bytes(stack: Stack, job_id: str, key: str | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with stack.client.get(f"{stack.url}/v1/jobs/{job_id}/result", headers=headers) as reply:
        assert reply.status == 200, await reply.text()
        return await reply.read()


async def submit_as(stack: Stack, key: str, provider: str, request: dict[str, Any]) -> str:
    async with stack.client.post(
        f"{stack.url}/v1/jobs",
        json={"provider": provider, "request": request},
        headers={"Authorization": f"Bearer {key}"},
    ) as reply:
        assert reply.status == 201, await reply.text()
        job_id: str = (await reply.json())["id"]
        return job_id


async def download(page: Any, stack: Stack, job_id: str, key: str | None = None) -> Path:
    async with page.expect_download(timeout=WAIT) as info:
        await page.locator("#result-download").click()
    saved = Path(await (await info.value).path())
    assert await asyncio.to_thread(saved.read_bytes) == await result_bytes(stack, job_id, key)
    return saved


# -- without a browser: the page's routes, public even when keys are required ------------------


async def test_the_page_is_public_and_serves_only_its_files(make_stack: StackFactory) -> None:
    stack = await make_stack(auth={"required": True})
    async with stack.client.get(f"{stack.url}/?state=running", allow_redirects=False) as reply:
        assert reply.status == 302
        assert reply.headers["Location"] == "/ui/?state=running"
    for name, kind in (("", "text/html"), ("app.js", "text/javascript"), ("style.css", "text/css")):
        async with stack.client.get(f"{stack.url}/ui/{name}") as reply:
            assert reply.status == 200, name
            assert reply.content_type == kind
            assert "script-src 'self'" in reply.headers["Content-Security-Policy"]
            assert reply.headers["X-Content-Type-Options"] == "nosniff"
            etag = reply.headers["ETag"]
        async with stack.client.get(
            f"{stack.url}/ui/{name}", headers={"If-None-Match": etag}
        ) as reply:
            assert reply.status == 304
    for name in ("nope.js", "..%2Fpages.py", ".hidden.js", "app.js.map"):
        async with stack.client.get(f"{stack.url}/ui/{name}") as reply:
            assert reply.status == 404, name
            assert reply.content_type == "application/problem+json"
    async with stack.client.get(f"{stack.url}/v1/jobs") as reply:
        assert reply.status == 401  # the page is public, the API is not


# -- in the browser --------------------------------------------------------------------------------


async def test_jobs_page_live_job_view_download_and_narrow_screen(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    expect = expect_()
    async with chromium() as browser:
        context = await browser.new_context(accept_downloads=True, viewport=WIDE)
        page = await context.new_page()
        errors = PageErrors(page)
        await page.goto(f"{stack.url}/")
        assert page.url == f"{stack.url}/ui/"
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)
        await expect(page.locator("#f-provider option[value=pulse]")).to_have_count(1)
        await expect(page.locator("#jobs-empty")).to_be_visible()  # the (empty) list is in
        marker = await page.evaluate(WATCH_STATES)

        # A job submitted elsewhere appears at the top and finishes, live.
        older = await stack.submit("extract", EXTRACT, labels={"team": "ui"})
        job = await stack.submit("extract", EXTRACT, labels={"team": "ui"})
        row = page.locator(f'tr[data-job-id="{job["id"]}"]')
        await expect(row).to_have_attribute("data-state", "succeeded", timeout=WAIT)
        await expect(page.locator("#jobs-body tr").first).to_have_attribute(
            "data-job-id", job["id"]
        )
        await expect(page.locator(f'tr[data-job-id="{older["id"]}"]')).to_have_count(1)
        seen = await page.evaluate("id => window.__seen[id]", job["id"])
        assert seen[0] in ("queued", "running"), seen
        assert seen[-1] == "succeeded", seen
        assert await page.evaluate("() => window.__marker") == marker, "the page reloaded"
        await expect(row.locator("progress")).to_have_attribute("aria-label", re.compile(job["id"]))
        await expect(row).to_contain_text("team:ui")
        print(await screenshot(page, "ui-jobs-page"))

        # Open it from the keyboard: Enter on the row's link; focus moves to the view.
        await row.locator("a.job-link").focus()
        await page.keyboard.press("Enter")
        assert page.url.endswith(f"#/jobs/{job['id']}")
        await expect(page.locator("#job-heading")).to_be_focused()
        await expect(page.locator("#job-details")).to_have_attribute("data-state", "succeeded")
        await expect(page.locator("#timeline li.ev-created")).to_have_count(1, timeout=WAIT)
        await expect(page.locator("#timeline li.ev-end")).to_have_count(1, timeout=WAIT)
        await expect(page.locator("#job-result pre.json")).to_contain_text("{", timeout=WAIT)
        # extract cannot cancel: no button; a finished job can be rerun (its stored request).
        await expect(page.locator("#act-cancel")).to_have_count(0)
        await expect(page.locator("#act-rerun")).to_have_count(1)
        await download(page, stack, job["id"])
        print(await screenshot(page, "ui-job-view"))

        # Rerun: a new job, linked from the view.
        await page.locator("#act-rerun").click()
        rerun_link = page.locator("#action-status a")
        await expect(rerun_link).to_have_count(1, timeout=WAIT)
        rerun_id = (await rerun_link.inner_text()).strip()
        assert rerun_id != job["id"]
        await expect(page.locator(f'tr[data-job-id="{rerun_id}"]')).to_have_count(1, timeout=WAIT)

        # Escape closes the view; focus goes back to the job's row.
        await page.locator("#job-heading").focus()
        await page.keyboard.press("Escape")
        await expect(page.locator("#job")).to_be_hidden()
        await expect(row.locator("a.job-link")).to_be_focused()

        # A paged (catchall) result, its pages, and a continue the provider refuses.
        catchall = await stack.submit("catchall", {"query": "ui test", "limit": 50})
        await page.evaluate("id => { location.hash = '#/jobs/' + id }", catchall["id"])
        await expect(page.locator("#job-details")).to_have_attribute(
            "data-state", "succeeded", timeout=WAIT
        )
        label = page.locator("#page-label")
        await expect(label).to_have_text(re.compile(r"^Page 1 of 3"), timeout=WAIT)
        await expect(page.locator("#job-result ol.records > li")).to_have_count(20)
        await page.locator("#page-next").click()
        await expect(label).to_have_text(re.compile(r"^Page 2 of 3"))
        await expect(page.locator("#page-next")).to_be_focused()
        await page.locator("#act-limit").fill("5")
        await page.locator("#act-continue button").click()
        alert = page.locator("#alert")
        await expect(alert).to_contain_text("upstream_rejected", timeout=WAIT)
        await expect(alert).to_contain_text("new_limit")
        await expect(page.locator("[role=alert]")).to_be_visible()
        print(await screenshot(page, "ui-action-error"))

        # Filters live in the URL: a shared link opens the same view.
        await page.locator("#f-provider").select_option("catchall")
        await expect(page.locator("#jobs-body tr")).to_have_count(1, timeout=WAIT)
        assert "provider=catchall" in page.url
        await page.goto(f"{stack.url}/ui/?provider=extract&label=team:ui&limit=2")
        await expect(page.locator("#f-label")).to_have_value("team:ui")
        await expect(page.locator("#f-provider")).to_have_value("extract")
        # The two submitted and the rerun (which keeps its original's labels), two per page.
        await expect(page.locator("#jobs-body tr")).to_have_count(2, timeout=WAIT)
        await page.locator("#load-more").click()
        await expect(page.locator("#jobs-body tr")).to_have_count(3, timeout=WAIT)
        await expect(page.locator("#load-more")).to_be_hidden()

        # 360 px: no horizontal scroll, with the table and with a job open.
        await page.set_viewport_size(NARROW)
        scroll, inner = await no_horizontal_scroll(page)
        assert scroll <= inner, (scroll, inner)
        print(await screenshot(page, "ui-jobs-page-360"))
        await page.evaluate("id => { location.hash = '#/jobs/' + id }", job["id"])
        await expect(page.locator("#job-result pre.json")).to_be_visible(timeout=WAIT)
        scroll, inner = await no_horizontal_scroll(page)
        assert scroll <= inner, (scroll, inner)
        print(await screenshot(page, "ui-job-view-360"))
        errors.check()
        await context.close()


async def test_cancel_a_running_pulse_job_from_the_page(make_stack: StackFactory) -> None:
    # A ?sandbox=slow pulse job lasts 200 sandbox seconds: 50 s here, and it is submitted only
    # once the page is live, so however long chromium takes to start it is still going when the
    # page cancels it (which ends the test: the 50 s are never waited out).
    stack = await make_stack(speed=4)
    expect = expect_()
    async with chromium() as browser:
        page = await browser.new_page(viewport=WIDE)
        errors = PageErrors(page)
        await page.goto(f"{stack.url}/ui/")
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)
        job = await stack.submit(
            "pulse", {"fileUrl": "https://example.com/report.pdf?sandbox=slow"}
        )
        await page.evaluate("id => { location.hash = '#/jobs/' + id }", job["id"])
        await expect(page.locator("#job-heading")).to_be_focused(timeout=WAIT)
        cancel = page.locator("#act-cancel")
        await expect(cancel).to_be_visible(timeout=WAIT)
        await cancel.click()
        await expect(page.locator("#job-details")).to_have_attribute(
            "data-state", "canceled", timeout=WAIT
        )
        await expect(page.locator(f'tr[data-job-id="{job["id"]}"]')).to_have_attribute(
            "data-state", "canceled", timeout=WAIT
        )
        await expect(cancel).to_have_count(0)
        await expect(page.locator("#timeline li.ev-end")).to_have_count(1, timeout=WAIT)
        assert (await stack.job(job["id"]))["state"] == "canceled"
        print(await screenshot(page, "ui-job-canceled"))
        errors.check()


async def test_with_keys_required_the_page_asks_for_one(make_stack: StackFactory) -> None:
    stack = await make_stack(auth={"required": True})
    _, key = (
        await stack.app[COMPONENTS_KEY]
        .require_access()
        .create("growth", (Scope.READ, Scope.WRITE), name="ui test")
    )
    expect = expect_()
    async with chromium() as browser:
        context = await browser.new_context(accept_downloads=True, viewport=WIDE)
        page = await context.new_page()
        errors = PageErrors(page)
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        await page.goto(f"{stack.url}/")
        message = page.locator("#auth-message")
        await expect(message).to_contain_text("auth_required", timeout=WAIT)
        await expect(message).to_contain_text("API key")
        await expect(page.locator("#conn")).to_have_attribute("data-state", "unauthorized")
        await expect(page.locator("#api-key")).to_be_focused()
        print(await screenshot(page, "ui-key-needed"))

        await page.locator("#api-key").fill("jg_not-a-real-key-at-all")
        await page.locator("#api-key").press("Enter")
        await expect(message).to_contain_text("invalid_key", timeout=WAIT)

        await page.locator("#api-key").fill(key)
        await page.locator("#auth-form button[type=submit]").click()
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)
        await expect(message).to_contain_text("Using the key")

        job = {"id": await submit_as(stack, key, "extract", EXTRACT)}
        row = page.locator(f'tr[data-job-id="{job["id"]}"]')
        await expect(row).to_have_attribute("data-state", "succeeded", timeout=WAIT)
        await row.locator("a.job-link").click()
        await expect(page.locator("#timeline li.ev-end")).to_have_count(1, timeout=WAIT)
        await download(page, stack, job["id"], key)  # fetched with Authorization, saved as a blob

        # The submit form, with the key.
        await page.locator("#submit-panel summary").click()
        await page.locator("#s-provider").select_option("extract")
        await page.locator("#s-request").fill('{"url": "https://example.com", "singlePage": true}')
        await page.locator("#s-labels").fill("team:form")
        await page.locator("#submit-form button[type=submit]").click()
        submitted = page.locator("#submit-status a")
        await expect(submitted).to_have_count(1, timeout=WAIT)
        new_id = (await submitted.inner_text()).strip()
        await expect(page.locator(f'tr[data-job-id="{new_id}"]')).to_have_attribute(
            "data-state", "succeeded", timeout=WAIT
        )

        streams = [url for url in urls if "/events" in url]
        assert any("/v1/events?" in url and "access_token=jgs_" in url for url in streams), streams
        assert any(f"/v1/jobs/{job['id']}/events?" in url for url in streams), streams
        assert not [url for url in urls if key in url], "the key went into a URL"
        assert await page.evaluate("() => sessionStorage.getItem('jobgate.apiKey')") == key
        errors.check()
        await context.close()


async def test_streams_renew_their_token_and_resume_after_a_drop(
    make_stack: StackFactory,
) -> None:
    """Stream tokens live 3 s here: the page renews them before they expire, and a stream the
    gateway drops after its token expired comes back with a new one, missing no job."""
    stack = await make_stack(auth={"required": True, "stream_token_seconds": 3})
    _, key = (
        await stack.app[COMPONENTS_KEY].require_access().create("growth", (Scope.READ, Scope.WRITE))
    )
    expect = expect_()
    async with chromium() as browser:
        page = await browser.new_page(viewport=WIDE)
        errors = PageErrors(page)
        streams: list[str] = []
        page.on("request", lambda r: streams.append(r.url) if "/v1/events" in r.url else None)
        await page.goto(f"{stack.url}/ui/")
        await page.locator("#api-key").fill(key)
        await page.locator("#api-key").press("Enter")
        conn = page.locator("#conn")
        await expect(conn).to_have_attribute("data-state", "live", timeout=WAIT)
        first = streams[-1]
        for _ in range(2):  # renewed at three quarters of its life, before it expires
            async with page.expect_request(lambda r: "/v1/stream-tokens" in r.url, timeout=WAIT):
                pass
        # The gateway drops every stream (as a restart would); the first token has expired.
        for channel in list(stack.app[SSE_KEY].channels.values()):
            channel.close()
        job_id = await submit_as(stack, key, "extract", EXTRACT)  # while the page is away
        row = page.locator(f'tr[data-job-id="{job_id}"]')
        await expect(row).to_have_attribute("data-state", "succeeded", timeout=WAIT)
        await expect(conn).to_have_attribute("data-state", "live", timeout=WAIT)
        resumed = [url for url in streams if url != first]
        assert resumed, streams
        token = re.compile(r"access_token=([^&]+)")
        assert token.findall(resumed[-1]) != token.findall(first), (first, resumed)
        assert token.findall(first), first
        errors.check()


# -- streams that are refused, keys that change, ids the page is only told -----------------------

# A fetch round trip: once it is back, what the page had queued before it has run.
SETTLE = "() => fetch('/ui/', {cache: 'no-store'}).then(() => true)"
# The page's stream tokens, from the module the page itself loaded (one instance per URL).
TOKENS = """() => import('/ui/api.js').then(({tokens}) => ({
  token: tokens.token, timer: tokens.timer !== null, holders: tokens.holders.size,
}))"""
FOLLOW = """async (path) => {
  const {LiveStream} = await import('/ui/api.js');
  window.__statuses = [];
  const stream = new LiveStream(path, {
    onStatus: (status, error) =>
      window.__statuses.push(error ? `${status} ${error.status}` : status),
  });
  stream.open();
}"""


async def test_a_refused_stream_stops_and_says_so(make_stack: StackFactory) -> None:
    """A stream (or its token) refused for good, 400, 403 or 404, is not retried, and with no
    stream open no token is renewed: minutes later on the page's clock it has asked for nothing
    more."""
    stack = await make_stack(auth={"required": True, "stream_token_seconds": 3})
    access = stack.app[COMPONENTS_KEY].require_access()
    _, key = await access.create("growth", (Scope.READ, Scope.WRITE))
    _, write_only = await access.create("growth", (Scope.WRITE,))
    expect = expect_()
    async with chromium() as browser:
        page = await browser.new_page(viewport=WIDE)
        errors = PageErrors(page)
        asked: list[str] = []
        page.on(
            "request",
            lambda r: asked.append(r.url) if re.search("/events|/stream-tokens", r.url) else None,
        )

        async def nothing_more_asked() -> None:
            before = len(asked)
            await page.clock.run_for(300_000)  # every retry and renewal timer is due by then
            await page.evaluate(SETTLE)
            assert asked[before:] == [], asked[before:]

        await page.clock.install()
        # /v1/events refuses the filter (400): the stream stops, the page says why.
        await page.goto(f"{stack.url}/ui/?provider=nope")
        await page.locator("#api-key").fill(key)
        await page.locator("#api-key").press("Enter")
        conn = page.locator("#conn")
        await expect(conn).to_have_attribute("data-state", "invalid", timeout=WAIT)
        await expect(conn).to_have_text("Refused")
        await expect(page.locator("#alert")).to_contain_text("invalid_query")
        await nothing_more_asked()
        assert await page.evaluate(TOKENS) == {
            "token": None,  # the stream's was dropped when it was refused
            "timer": False,
            "holders": 0,
        }
        print(await screenshot(page, "ui-stream-refused"))

        # A job's stream that is not there (404): the same.
        await page.evaluate(FOLLOW, "/v1/jobs/job_nope/events")
        await page.wait_for_function(
            "() => window.__statuses.includes('not_found 404')", timeout=WAIT
        )
        await nothing_more_asked()
        assert (await page.evaluate(TOKENS))["holders"] == 0

        # A key without jobs:read: its token is refused (403), the page says it is not allowed.
        await page.locator("#api-key").fill(write_only)
        await page.locator("#api-key").press("Enter")
        await expect(conn).to_have_attribute("data-state", "forbidden", timeout=WAIT)
        await expect(conn).to_have_text("Not allowed")
        await expect(page.locator("#auth-message")).to_contain_text("refused this key")
        await nothing_more_asked()
        errors.check()


async def test_a_new_key_drops_a_token_asked_for_with_the_old_one(
    make_stack: StackFactory,
) -> None:
    """A stream token still being fetched with the old key when a new one is entered is never
    used: the streams go on with the new key's tenant."""
    stack = await make_stack(auth={"required": True})
    access = stack.app[COMPONENTS_KEY].require_access()
    _, first = await access.create("alpha", (Scope.READ, Scope.WRITE))
    _, second = await access.create("beta", (Scope.READ, Scope.WRITE))
    expect = expect_()
    async with chromium() as browser:
        page = await browser.new_page(viewport=WIDE)
        errors = PageErrors(page)
        held, release = asyncio.Event(), asyncio.Event()
        stale: list[Any] = []

        async def hold_the_first(route: Any) -> None:
            if not stale:
                stale.append(route.request)
                held.set()
                await release.wait()
            await route.continue_()

        await page.route(re.compile(r"/v1/stream-tokens$"), hold_the_first)
        try:
            await page.goto(f"{stack.url}/ui/")
            await page.locator("#api-key").fill(first)
            await page.locator("#api-key").press("Enter")
            await asyncio.wait_for(held.wait(), WAIT / 1000)  # the first key's token, on its way
            await page.locator("#api-key").fill(second)
            await page.locator("#api-key").press("Enter")
            conn = page.locator("#conn")
            await expect(conn).to_have_attribute("data-state", "live", timeout=WAIT)
            current = await page.evaluate(TOKENS)
            async with page.expect_event(
                "requestfinished", lambda request: request is stale[0], timeout=WAIT
            ):
                release.set()
        finally:
            release.set()
        await page.evaluate(SETTLE)
        after = await page.evaluate(TOKENS)
        assert after == current, (current, after)
        assert (await access.from_stream_token(after["token"])).tenant == "beta"
        job_id = await submit_as(stack, second, "extract", EXTRACT)
        row = page.locator(f'tr[data-job-id="{job_id}"]')
        await expect(row).to_have_attribute("data-state", "succeeded", timeout=WAIT)
        await expect(conn).to_have_attribute("data-state", "live")
        errors.check()


async def test_a_reopened_stream_resumes_from_an_id_it_was_only_told(
    make_stack: StackFactory,
) -> None:
    """A stream that opens with a message carrying only an id (no event of a job yet), then is
    given up by the browser, is reopened by the page from that id (?last_event_id=)."""
    stack = await make_stack()
    await stack.submit("extract", EXTRACT)
    head = await stack.app[COMPONENTS_KEY].require_service().store.last_event_id()
    assert head
    expect = expect_()
    async with chromium() as browser:
        page = await browser.new_page(viewport=WIDE)
        errors = PageErrors(page)
        streams: list[str] = []

        async def first_told_then_refused(route: Any) -> None:
            if route.request.resource_type != "eventsource":
                await route.continue_()  # the page asking why the browser gave up
                return
            streams.append(route.request.url)
            if len(streams) == 1:  # opens, says where it starts, and ends
                body = f"retry: 50\nid: {head}\ndata:\n\n"
                await route.fulfill(status=200, content_type="text/event-stream", body=body)
            elif len(streams) == 2:  # the browser comes back and is refused: it gives up
                await route.fulfill(status=503, content_type="text/plain", body="try later")
            else:
                await route.continue_()

        await page.route(re.compile(r"/v1/events(\?|$)"), first_told_then_refused)
        async with page.expect_request(
            lambda r: r.resource_type == "eventsource" and "last_event_id=" in r.url, timeout=WAIT
        ) as reopened:
            await page.goto(f"{stack.url}/ui/")
        assert f"last_event_id={head}" in (await reopened.value).url, streams
        conn = page.locator("#conn")
        await expect(conn).to_have_attribute("data-state", "live", timeout=WAIT)
        job = await stack.submit("extract", EXTRACT)
        row = page.locator(f'tr[data-job-id="{job["id"]}"]')
        await expect(row).to_have_attribute("data-state", "succeeded", timeout=WAIT)
        errors.check()
