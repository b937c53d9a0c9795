"""``protolm report`` on a model directory and on a bundle, opened in headless Chromium.

The page must load with no console message at all (its Content Security Policy makes any
script or fetch one, so a clean console means nothing tried to run or load), and the DOM
Chromium built must show every prototype with its exemplar. A control page with a script and
a remote image checks that the console is really read. Chromium is Debian's ``chromium``
package: the test skips without it, except under CI (``.ci/run`` installs it), where it fails.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from html import escape
from pathlib import Path

import pytest

from cli.main import main
from core.bundle import read_exemplars

BROWSERS = ("chromium", "chromium-browser")
WINDOW = (1280, 2000)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = next((path for path in map(shutil.which, BROWSERS) if path), None)
    if found is None:
        reason = "headless Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"under CI the report must be checked in a browser: {reason}")
        pytest.skip(reason)
    return found


def browse(chromium: str, page: Path, directory: Path) -> tuple[str, list[str], Path]:
    """(the DOM after loading, the console's messages, a screenshot) of ``page``."""
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
              f"--user-data-dir={directory / 'profile'}", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    screenshot = directory / "page.png"
    shot = subprocess.run([*common, f"--screenshot={screenshot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", page.as_uri()],
                          capture_output=True, text=True, timeout=180, check=False)
    assert shot.returncode == 0, shot.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() + shot.stderr.splitlines() if ":CONSOLE" in line]
    return dom.stdout, console, screenshot


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def check_report(chromium: str, target: Path, exemplars_file: Path, tmp_path: Path) -> str:
    page = tmp_path / "report.html"
    assert main(["report", str(target), "--output", str(page), "--examples", "3", "--map-sample", "40"]) == 0
    dom, console, screenshot = browse(chromium, page, tmp_path)
    assert console == [], console
    assert png_size(screenshot) == WINDOW and screenshot.stat().st_size > 20_000
    assert '<section id="prototypes">' in dom and 'class="map"' in dom and '<section id="examples">' in dom
    for exemplar in read_exemplars(exemplars_file):
        assert f'id="prototype-{exemplar.prototype}"' in dom
        row = dom.split(f'id="prototype-{exemplar.prototype}"', 1)[1].split("</tr>", 1)[0]
        assert exemplar.words and all(escape(w.text, quote=False) in row for w in exemplar.words)
    assert dom.count('class="example"') == 3
    return dom


def test_the_report_of_a_model_directory_loads_cleanly_and_shows_the_prototypes(chromium, tiny_model_dir, tmp_path):
    dom = check_report(chromium, tiny_model_dir, tiny_model_dir / "exemplars.json", tmp_path)
    assert 'class="confusion"' in dom and 'id="notes"' not in dom


def test_the_report_of_a_bundle_loads_cleanly_and_says_what_it_lacks(chromium, tiny_bundle, tmp_path):
    dom = check_report(chromium, tiny_bundle, tiny_bundle / "exemplars.json", tmp_path)
    assert 'class="confusion"' in dom and "a bundle holds no validation data" in dom


def test_the_console_check_sees_a_script_and_a_fetch(chromium, tmp_path):
    page = tmp_path / "control.html"
    page.write_text("<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'\"></head>"
                    "<body><p>x</p><img src=\"http://example.invalid/x.png\"><script>document.title = 'ran'</script></body></html>")
    _, console, _ = browse(chromium, page, tmp_path)
    assert any("example.invalid" in line for line in console) and any("inline script" in line for line in console), console
