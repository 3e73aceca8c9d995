"""The console's charts in a real browser: ECharts, served by the app, drawing under the strict CSP.

A test-only page (tests/support/templates/chart_test.html) extends the console's base template
and includes `chart_scripts.html`; it is served with the console's own security headers and
static route, so what Chromium runs is what a console page runs. The engine is not needed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
from aiohttp import web

from crm_backend.console import STATIC_DIR
from crm_backend.console.web import build_templates, secure
from tests.integration.test_browser import CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (bin/test installs chromium)"),
]
TEST_TEMPLATES = Path(__file__).resolve().parent.parent / "support" / "templates"
ECHARTS = STATIC_DIR / "vendor" / "echarts" / "echarts.min.js"
# Seen by the page before any of its scripts run: every CSP violation, with what was refused.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(event.violatedDirective + " " + event.blockedURI);
});
"""


def chart_test_app() -> web.Application:
    templates = build_templates()
    templates.loader = jinja2.ChoiceLoader([templates.loader, jinja2.FileSystemLoader(TEST_TEMPLATES)])  # type: ignore[list-item]

    async def page(request: web.Request) -> web.Response:
        html = templates.get_template("chart_test.html").render(
            staff=None, security_alert=None, csrf="", path=request.path, Role=None, error=None, notice=None
        )
        return secure(web.Response(text=html, content_type="text/html", charset="utf-8"))

    async def no_events(request: web.Request) -> web.Response:
        return web.Response(status=204)  # console.js listens for live updates; there are none here

    app = web.Application()
    app.router.add_get("/chart-test", page)
    app.router.add_get("/console/events", no_events)
    app.router.add_static("/console/static/", STATIC_DIR, append_version=False)
    return app


@pytest.fixture
def chart_server() -> Iterator[str]:
    """The test page and the console's static files on a loopback port, in a thread of their own."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(chart_test_app())
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_echarts_draws_each_table_under_the_console_csp(chart_server: str, browser: Any, artifacts_dir: Path) -> None:
    assert ECHARTS.exists(), f"{ECHARTS} is missing: bin/setup (bin/fetch-vendor) fetches it"
    messages: list[str] = []
    context = browser.new_context(viewport={"width": 1100, "height": 1000}, locale="zh-CN")
    context.add_init_script(RECORD_VIOLATIONS)
    page = context.new_page()
    page.on("console", lambda message: messages.append(f"console.{message.type}: {message.text}"))
    page.on("pageerror", lambda error: messages.append(f"page error: {error}"))

    response = page.goto(f"{chart_server}/chart-test")
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector("figure[data-table=by-day][data-rendered] canvas")
    page.wait_for_selector("figure[data-table=by-department][data-rendered] canvas")

    # Both series of the line chart; the stacked bars skip the 备注 column, which is not numeric.
    assert page.get_attribute("figure[data-table=by-day]", "data-rendered") == "2"
    assert page.get_attribute("figure[data-table=by-department]", "data-rendered") == "2"
    size = page.eval_on_selector("figure[data-table=by-day] canvas", "c => [c.width, c.height]")
    assert size[0] > 300 and size[1] > 200
    # The canvas has been drawn on, not just created.
    drawn = page.eval_on_selector(
        "figure[data-table=by-day] canvas",
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 === 3 && v > 0)",
    )
    assert drawn
    page.hover("figure[data-table=by-department] canvas", position={"x": 300, "y": 200})  # the tooltip too
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts_dir / "charts.png"), full_page=True)

    assert page.evaluate("window.__cspViolations") == []
    assert [m for m in messages if "Content Security Policy" in m or "error" in m] == []

    licence = page.request.get(f"{chart_server}/console/static/vendor/echarts/LICENSE.txt")
    assert licence.ok and licence.headers["content-type"].startswith("text/plain")
    assert "Apache License" in licence.text()
    assert page.get_attribute("footer a[href$='LICENSE.txt']", "href") == "/console/static/vendor/echarts/LICENSE.txt"
    context.close()
