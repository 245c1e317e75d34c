"""A headless Debian chromium driven by selenium, for report tests that must run in a real browser.

Each page load records: console messages (`console_errors`), every network request the page made
(`requests`, from the DevTools performance log) and any alert/confirm/prompt the page tried to open (`dialogs`,
recorded by wrappers installed before any page script runs).
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1366,900"]

_RECORD_DIALOGS = """
window.__dialogs = [];
['alert', 'confirm', 'prompt', 'print'].forEach(function (name) {
  window[name] = function (msg) { window.__dialogs.push(name + ':' + msg); return null; };
});
"""

#: Script returning words (letters and digits, which fit any cell) that the layout broke across lines in a
#: table cell, heading or chip: a report that wraps inside a word is unreadable at narrow widths.
BROKEN_WORDS = """
var broken = [];
document.querySelectorAll('td, th, dd, h3, .chip').forEach(function (cell) {
  var walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  var node;
  while ((node = walker.nextNode())) {
    var re = /[A-Za-z0-9]{2,20}/g, m;  // ordinary words: letters and digits, which fit any cell
    while ((m = re.exec(node.data))) {
      var range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      var rects = Array.from(range.getClientRects()).filter(function (r) { return r.width > 0; });
      var tops = new Set(rects.map(function (r) { return Math.round(r.top); }));
      if (tops.size > 1 && cell.offsetParent !== null) broken.push(m[0]);
    }
  }
});
return broken.slice(0, 20);
"""


def missing_reason() -> str | None:
    """Why browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")):
        if not Path(path).exists():
            return f"{what} not found at {path} (CI installs it: apt-get install chromium chromium-driver)"
    return None


class Browser:
    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="rlaudit-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in [*FLAGS, f"--user-data-dir={self.profile}"]:
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        opts.set_capability("unhandledPromptBehavior", "ignore")
        self.driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _RECORD_DIALOGS})
        self.driver.execute_cdp_cmd("Network.enable", {})

    def open(self, path: Path) -> None:
        self.driver.get_log("browser")  # drop messages from earlier pages
        self.driver.get_log("performance")
        self.driver.get(path.resolve().as_uri())
        self.wait_for("return document.readyState === 'complete' && typeof window.Plotly === 'object'")

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait_for(self, script: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(script)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.1)

    def console(self) -> list[dict]:
        return self.driver.get_log("browser")

    def requests(self) -> list[str]:
        urls = []
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                urls.append(msg["params"]["request"]["url"])
        return urls

    def screenshot(self, name: str, full_page: bool = False, max_height: int = 8000) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        if full_page:
            height = min(int(self.js("return document.documentElement.scrollHeight")), max_height)
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": 1366, "height": height, "scale": 1}})
            path.write_bytes(base64.b64decode(shot["data"]))
        else:
            self.driver.save_screenshot(str(path))
        return path

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)
