"""``/docs`` in a real browser: Swagger UI, served by the gateway itself, renders the OpenAPI
document with the fields of its schemas and request examples, asks no other host for anything,
and logs no script error, console error or CSP refusal."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.integration.browser import PageErrors, chromium, screenshot
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

TIMEOUT_MS = 20_000


async def test_docs_render_the_schema_of_submitbody_with_its_fields(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    origin = urlsplit(stack.url).netloc
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 1000})
        hosts: set[str] = set()
        page.on("request", lambda request: hosts.add(urlsplit(request.url).netloc))
        errors = PageErrors(page)
        await page.goto(f"{stack.url}/docs")
        info = page.locator(".swagger-ui .info")
        await info.wait_for(timeout=TIMEOUT_MS)
        assert "OAS 3.2" in await info.inner_text()

        # The Schemas section: SubmitBody opens onto its fields.
        model = page.locator("section.models article.json-schema-2020-12").filter(
            has=page.locator(".json-schema-2020-12__title", has_text="SubmitBody")
        )
        await model.first.locator(".json-schema-2020-12-expand-deep-button").click()
        for field in ("provider", "request", "upstream_id", "labels", "callback_url"):
            await model.first.get_by_text(field, exact=True).first.wait_for(timeout=TIMEOUT_MS)
        await model.first.scroll_into_view_if_needed()
        print(await screenshot(page, "docs-submitbody", full_page=False))

        # The submit operation offers the documented examples as ready bodies for try-it.
        submit = page.locator("#operations-jobs-submit_job")
        await submit.locator("button.opblock-summary-control").click()
        body = submit.locator(".body-param__example, .microlight").first
        await body.wait_for(timeout=TIMEOUT_MS)
        assert "https://example.com" in await body.inner_text()
        await submit.get_by_role("button", name="Try it out").wait_for(timeout=TIMEOUT_MS)
        errors.check()

    assert hosts == {origin}, f"the page asked other hosts: {hosts - {origin}}"
