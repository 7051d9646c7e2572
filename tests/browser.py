"""A report page in a real headless Chromium: a screenshot, and the layout as the browser measured it.

Chromium comes from Debian's `chromium` package (`.ci/run` installs it). It runs with a fresh
profile and no network services, as root-safe `--no-sandbox`. A small script added to a copy of
the page measures, after layout, the viewport and every table, block and image.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTH = 1024

MEASURE = """<script>
(() => {
  const viewport = document.documentElement.clientWidth;
  const elements = [...document.querySelectorAll('table, pre, img, .warn, h1, h2, p')].map(e => {
    const box = e.getBoundingClientRect();
    return {tag: e.tagName.toLowerCase(), text: (e.innerText || e.alt || '').slice(0, 60), left: box.left,
            right: box.right, scroll: e.scrollWidth, client: e.clientWidth};
  });
  const out = document.createElement('pre');
  out.id = 'tfquant-measure';
  out.textContent = JSON.stringify({viewport, page: document.documentElement.scrollWidth, elements});
  document.body.appendChild(out);
})();
</script>"""


def chromium() -> str:
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no Chromium on PATH: install Debian's chromium package (.ci/run does)")


def render(page: Path, screenshot: Path) -> dict:
    """Screenshot `page` to `screenshot` (PNG) and return the layout measured in the browser."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        common = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTH},2400"]
        subprocess.run(common + [f"--screenshot={screenshot}", page.resolve().as_uri()], check=True,
                       capture_output=True, timeout=120)
        probe = Path(profile) / "measure.html"
        probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
        dom = subprocess.run(common + ["--dump-dom", probe.as_uri()], check=True, capture_output=True, text=True,
                             timeout=120).stdout
    found = re.search(r'<pre id="tfquant-measure">(.*?)</pre>', dom, re.S)
    if found is None:
        raise RuntimeError(f"the measuring script did not run in Chromium: {dom[:300]!r}")
    import html

    return json.loads(html.unescape(found.group(1)))


def overflowing(layout: dict) -> list[dict]:
    """Elements wider than the page, or whose content is wider than their box (scrolled sideways)."""
    limit = layout["viewport"] + 1
    return [e for e in layout["elements"] if e["right"] > limit or (e["tag"] == "table" and e["scroll"] > e["client"] + 1)]
