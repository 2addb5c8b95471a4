"""The web page in headless Chromium (Debian's package, driven by Playwright): upload, Analyze, verdict.

Chromium missing is a failure, not a skip: set AIDETECT_SKIP_BROWSER_TESTS=1 to opt out on purpose.
AIDETECT_SAVE_SCREENSHOTS=1 writes the screenshot to docs/gateway-web-page.png (else to a temp dir).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import LiveStack
from tests.gateway.processes import REPO_ROOT

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("AIDETECT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGUMENTS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = REPO_ROOT / "docs" / "gateway-web-page.png"
VERDICTS = {
    "ai": "Likely AI-generated",
    "real": "Likely a real photo",
    "inconclusive": "Inconclusive: too close to call",
}
PROVENANCE_SCREENSHOT = Path("verdict-provenance-tiny-model.png")  # to tmp: docs has the shipped model's

if os.environ.get("AIDETECT_SKIP_BROWSER_TESTS") == "1":
    pytest.skip("AIDETECT_SKIP_BROWSER_TESTS=1", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` "
            "(or set AIDETECT_SKIP_BROWSER_TESTS=1 to skip the browser tests on purpose)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGUMENTS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, live_stack: LiveStack) -> Iterator[object]:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    opened = context.new_page()
    opened.goto(live_stack.gateway_url + "/")
    yield opened
    context.close()


def expected_label(stack: LiveStack, path: Path) -> str:
    """The verdict the API gives this file (the page must show the same)."""
    response = httpx.post(
        f"{stack.gateway_url}/predict", files={"file": (path.name, path.read_bytes())}, timeout=60
    )
    return str(response.json()["verdict"])


def test_verdict_band_and_provenance_are_shown(page, live_stack: LiveStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A PNG whose text chunks hold Stable Diffusion parameters (decided 'ai' by its metadata), a
    mid-grey image inside the band (inconclusive), and a JPEG whose EXIF names a camera (decided by
    the pixel score all the same)."""
    from playwright.sync_api import expect

    from tests.gateway import images, provenance_files

    made = {
        "generated.png": provenance_files.png_with_text(parameters=provenance_files.SD_PARAMETERS),
        "grey.png": images.solid(128),
        "camera.jpg": images.encode(
            images.gradient(), "JPEG", exif=provenance_files.exif(make="Canon", model="EOS R5").tobytes()
        ),
    }
    paths = []
    for name, data in made.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    expect(page.locator("#model-info")).to_contain_text("ai_detector v1")
    page.set_input_files("#file-input", [str(path) for path in paths])
    page.check("#explain")  # heatmaps on demand: the batch goes with ?explain=true
    page.click("#analyze")
    cards = page.locator(".card")
    expect(cards.nth(0).locator(".verdict")).to_have_text(VERDICTS["ai"], timeout=60_000)
    expect(cards.nth(0).locator(".reason")).to_contain_text("decided by the file's own metadata")
    expect(cards.nth(0).locator(".provenance .implies-ai")).to_contain_text("Stable Diffusion web UI")
    expect(cards.nth(1).locator(".verdict")).to_have_text(VERDICTS["inconclusive"])
    expect(cards.nth(1).locator(".reason")).to_contain_text("inconclusive band [0.350, 0.650)")
    expect(cards.nth(1).locator(".band")).to_be_visible()
    expect(cards.nth(1).locator(".provenance")).to_contain_text("its absence proves nothing")
    expect(cards.nth(2).locator(".verdict")).to_have_text(VERDICTS[expected_label(live_stack, paths[2])])
    expect(cards.nth(2).locator(".provenance .implies-camera")).to_contain_text("EOS R5")
    # The heatmap toggle swaps the preview for the model's input with the heatmap drawn over it.
    toggle = cards.nth(2).locator(".toggle-heatmap")
    expect(toggle).to_be_visible()
    toggle.click()
    expect(cards.nth(2).locator(".preview")).to_have_attribute("src", re.compile(r"^data:image/jpeg;base64,"))
    expect(toggle).to_have_text("Show image")
    screenshot = tmp_path / PROVENANCE_SCREENSHOT
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000


def test_upload_one_file_and_see_the_verdict(
    page, live_stack: LiveStack, uploads_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    image = uploads_dir / "real_05.jpeg"
    # The footer shows the model the page talks to (from GET /v1/model).
    expect(page.locator("#model-info")).to_contain_text("ai_detector v1")
    page.set_input_files("#file-input", str(image))
    expect(page.locator(".card .filename")).to_contain_text(image.name)
    page.click("#analyze")
    verdict = page.locator(".card .verdict")
    expect(verdict).to_have_text(VERDICTS[expected_label(live_stack, image)], timeout=60_000)
    expect(page.locator(".card .numbers")).to_contain_text("threshold 50.0 %")
    expect(page.locator(".card .numbers")).to_contain_text("model v1")
    screenshot = (
        SCREENSHOT if os.environ.get("AIDETECT_SAVE_SCREENSHOTS") == "1" else tmp_path / SCREENSHOT.name
    )
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000


def test_several_files_go_through_the_batch_endpoint(page, live_stack: LiveStack, uploads_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    paths = [uploads_dir / name for name in ("ai_03.jpeg", "real_12.png", "ai_20.webp")]
    batch_requests: list[str] = []
    page.on(
        "request", lambda request: batch_requests.append(request.url) if "/predict" in request.url else None
    )
    page.set_input_files("#file-input", [str(path) for path in paths])
    page.click("#analyze")
    verdicts = page.locator(".card .verdict")
    expect(verdicts).to_have_count(3)
    for index, path in enumerate(paths):
        expect(verdicts.nth(index)).to_have_text(VERDICTS[expected_label(live_stack, path)], timeout=60_000)
    assert batch_requests == [f"{live_stack.gateway_url}/predict/batch"]


def test_drop_a_file_and_see_a_clear_error_for_a_non_image(page, live_stack: LiveStack) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    text = base64.b64encode(b"this is a text file named like a photo").decode()
    data_transfer = page.evaluate_handle(
        """(encoded) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "holiday.jpg", { type: "image/jpeg" }));
            return transfer;
        }""",
        text,
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": data_transfer})
    expect(page.locator(".card .filename")).to_contain_text("holiday.jpg")
    page.click("#analyze")
    expect(page.locator("#message")).to_contain_text("not an image", timeout=60_000)
    expect(page.locator(".card.is-error .state")).to_contain_text("not an image")


def test_api_docs_render_offline(browser, live_stack: LiveStack) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    context = browser.new_context()
    page = context.new_page()
    outside: list[str] = []
    page.on("request", lambda request: None if "127.0.0.1" in request.url else outside.append(request.url))
    page.goto(live_stack.gateway_url + "/docs")
    expect(page.locator(".opblock-summary-path", has_text="/predict/batch")).to_be_visible(timeout=30_000)
    context.close()
    assert outside == []  # Swagger UI comes from the gateway itself, nothing from a CDN
