"""The presenter's path in Chromium, outside the suite: every tab's example, Stop, a refusal and a re-run, on the tiny
profile; it retakes the README's screenshots (1400 px wide) on the way.

    .venv/bin/python docs/presenter_tour.py            # writes docs/*.png, prints one line per check

Exit status 1 if any check fails. Needs Debian's chromium and the playwright package (no browser download).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import launched, tiny_settings  # noqa: E402  (the suite's real-server launcher, bounded teardown)
from playwright.sync_api import sync_playwright  # noqa: E402

from studio.engine import Reporter  # noqa: E402
from studio.tabs.segmentation_examples import EXAMPLES as SEGMENTATION_EXAMPLES  # noqa: E402
from studio.tabs.timelapse import EXAMPLES as TIMELAPSE_EXAMPLES  # noqa: E402

DOCS = ROOT / "docs"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-dev-shm-usage"]
RUN_S = 120_000
failures: list[str] = []
real_report = Reporter.__call__


def check(name: str, ok: bool) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}")
    if not ok:
        failures.append(name)


def slow(seconds: float) -> None:
    """Each progress report takes `seconds` (tiny steps take milliseconds: time for a person's Stop)."""
    def report(self, fraction, desc):
        time.sleep(seconds)
        return real_report(self, fraction, desc)
    Reporter.__call__ = report if seconds else real_report


def text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def wait_text(page, selector: str, needle: str, timeout: int = RUN_S) -> bool:
    try:
        page.wait_for_function("([s, n]) => (document.querySelector(s)?.innerText || '').includes(n)",
                               arg=[selector, needle], timeout=timeout)
        return True
    except Exception:
        return False


def shot(page, name: str) -> None:
    page.mouse.move(0, 0)
    for toast in page.locator("[data-testid='toast-close']").all():
        if toast.is_visible():
            toast.click()
    page.wait_for_timeout(500)
    page.screenshot(path=str(DOCS / name), full_page=True)
    print(f"     screenshot docs/{name}")


def tour(page) -> None:
    # Identity video: the page opens here. Its example fills the photo and scene; Generate runs it.
    check("the page opens on Identity video",
          page.get_by_role("tab", name="Identity video").get_attribute("aria-selected") == "true")
    check("Stop is hidden while nothing runs", not page.locator("#identity-run-stop").is_visible())
    page.get_by_text("Astronaut in a flower field", exact=True).first.click()
    page.wait_for_function("() => document.querySelectorAll('#identity-crops img').length === 1", timeout=RUN_S)
    page.locator("#identity-run").click()
    check("identity: done, with the random-score plot labelled", wait_text(page, "#identity-summary", "Took")
          and "random: tiny profile" in text(page, "#identity-summary"))
    page.locator("#identity-similarity").wait_for(state="visible")
    shot(page, "identity.png")

    # Time-lapse: an example runs at once; Stop stops it; another example runs to the end.
    page.get_by_role("tab", name="Time-lapse").click()
    slow(0.3)
    page.get_by_text(TIMELAPSE_EXAMPLES[0]["label"], exact=True).first.click()
    page.locator("#timelapse-run-stop").wait_for(state="visible")
    check("time-lapse example: running", wait_text(page, "#timelapse-summary", "Running", 10_000)
          or wait_text(page, "#timelapse-summary", "Denoising", 10_000))
    page.wait_for_timeout(800)
    pressed = time.monotonic()
    page.locator("#timelapse-run-stop").click()
    stopped = wait_text(page, "#timelapse-summary", "Stopped", 2_000)
    check(f"time-lapse example: Stop shows Stopped in {time.monotonic() - pressed:.1f} s", stopped)
    check("no error toast after Stop", page.locator("[data-testid='toast-body'].error:visible").count() == 0)
    slow(0)
    page.get_by_text(TIMELAPSE_EXAMPLES[1]["label"], exact=True).first.click()     # at once: not dropped as pending
    check("time-lapse example: re-run done", wait_text(page, "#timelapse-summary", "Took"))
    page.wait_for_function("() => (document.querySelector('#timelapse-estimate')?.innerText || '').includes('≈')")
    shot(page, "screenshot.png")

    # Safe generation: an example fills it; a refusal stays on the page; then a run.
    page.get_by_role("tab", name="Safe generation").click()
    page.locator("#safety-run").click()
    check("safe: an empty prompt is refused in its own words, and it stays",
          wait_text(page, "#safety-summary", "Write a prompt to check", 10_000))
    page.get_by_text("Remove an artist's style", exact=True).first.click()
    page.locator("#safety-run").click()
    check("safe: done, both clips' timings", wait_text(page, "#safety-summary", "Took")
          and "Left: guarded" in text(page, "#safety-summary"))
    shot(page, "safety.png")

    # Referring segmentation: the bundled example runs on a click; a click refines; Segment again says it cleared it.
    page.get_by_role("tab", name="Referring segmentation").click()
    page.get_by_text(f"“{SEGMENTATION_EXAMPLES[0][1]}”", exact=True).first.click()
    page.locator("#segmentation-run-stop").wait_for(state="visible")
    page.locator("#segmentation-run-stop").wait_for(state="hidden", timeout=RUN_S)
    check("segmentation example: done", wait_text(page, "#segmentation-explanation", "Key frame"))
    page.locator("#segmentation-keyframe img").wait_for(state="visible")
    page.locator("#segmentation-keyframe img").click(position={"x": 60, "y": 60})
    page.locator("button:visible", has_text="Refine with clicks").first.click()
    check("segmentation: the click is listed", wait_text(page, "body", "include frame", 10_000))
    page.locator("#segmentation-areas").wait_for(state="visible")
    shot(page, "segmentation.png")
    slow(0.2)                   # long enough to read the line a run starts with
    page.locator("#segmentation-run").click()
    check("segmentation: Segment again says the click was cleared",
          wait_text(page, "#segmentation-explanation", "1 refinement click cleared", 10_000))
    slow(0)
    page.locator("#segmentation-run-stop").wait_for(state="hidden", timeout=RUN_S)
    check("segmentation: re-run done", wait_text(page, "#segmentation-explanation", "Key frame"))
    page.get_by_text("“both cats”", exact=True).first.click()
    page.locator("#segmentation-run-stop").wait_for(state="visible")
    page.locator("#segmentation-run-stop").wait_for(state="hidden", timeout=RUN_S)
    check("segmentation: two objects", wait_text(page, "#segmentation-explanation", "Key frame"))
    page.locator("#segmentation-areas").wait_for(state="visible")
    shot(page, "segmentation-two.png")


def main() -> int:
    folder = Path(tempfile.mkdtemp(prefix="presenter-"))
    with launched(tiny_settings(folder / "outputs")) as (_, url), sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("tab", name="Identity video").wait_for(state="visible")
            tour(page)
        finally:
            browser.close()
    print(f"{len(failures)} check(s) failed" if failures else "every check passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
