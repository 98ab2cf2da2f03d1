"""Screenshot of a running demo after clicking one example: ``python docs/screenshot_demo.py URL OUT.png [EXAMPLE]``.

How docs/demo.png was made (start ``python apps/demo.py --checkpoint ...`` first). Needs playwright and a Chromium
(``apt-get install chromium``; another one with DEMO_BROWSER=/path/to/chrome).
"""
import os
import shutil
import sys

from playwright.sync_api import sync_playwright


def main(url: str, out: str, example: str = "move_right", text: str = "") -> None:
    browser_path = os.environ.get("DEMO_BROWSER") or shutil.which("chromium") or shutil.which("google-chrome")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True,
                                    args=["--no-sandbox", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        page.goto(url)
        if text:
            page.fill("#text textarea", text)
        page.get_by_role("button", name=example, exact=True).click()
        page.wait_for_selector("#prediction:has-text(':')", timeout=60_000)
        page.wait_for_timeout(1000)  # let the chart and the frames finish drawing
        page.screenshot(path=out, full_page=True)
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
