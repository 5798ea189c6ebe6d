"""Real-browser tests: the agent desktop and the chat widget in headless Chromium (the Debian package, driven
by Playwright; Playwright never downloads a browser), against the real Serve app and PostgreSQL.

The app is the integration suite's ``app`` fixture (tests/integration/conftest.py), reused as it is but scoped to
this package: a second session-scoped copy would start a second Serve app beside the integration one in a full
run, so this one is shut down when the browser tests are done, before the integration tests start theirs.
Screenshots of every step go to ``test-artifacts/screenshots/`` at the repository root.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration import conftest as _integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def _unwrapped(fixture: object) -> Callable:
    """The plain generator function behind a fixture defined in another conftest."""
    get = getattr(fixture, "_get_wrapped_function", None)
    return get() if get is not None else fixture  # type: ignore[return-value]


@pytest.fixture(scope="package")
def pg_session_database() -> Iterator[str]:
    """A fresh real PostgreSQL database for the browser tests (the integration suite's, package-scoped)."""
    yield from _unwrapped(_integration.pg_session_database)()


@pytest.fixture(scope="package")
def app(tmp_path_factory, index_dir, pg_session_database, smollm2_dir):
    """The real Serve app (cluster/serve-local.yaml) exactly as the integration tests start it."""
    yield from _unwrapped(_integration.app)(tmp_path_factory, index_dir, pg_session_database, smollm2_dir)


@pytest.fixture(scope="package")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: `apt-get install -y chromium` (`make install` does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser):
    """``new_page(width=1280, height=860)``: a page in its own context (own sessionStorage, like a separate
    browser window of another person). Console errors of the page fail the test."""
    contexts = []
    errors: list[str] = []

    def make(width: int = 1280, height: int = 860):
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(30_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors in the pages: {errors}"


@pytest.fixture
def shot(request) -> Callable:
    """``shot(page, "step-name")`` saves test-artifacts/screenshots/<test>-<nn>-<step-name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    taken = [0]

    def take(page, name: str) -> Path:
        taken[0] += 1
        path = SCREENSHOTS / f"{test}-{taken[0]:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
