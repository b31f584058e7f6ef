"""A real headless Chromium (Debian's package) for pages osa-grid writes."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        reason = "chromium is not installed (scripts/browser/ensure.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )


def rendered_dom(page: Path) -> str:
    """The page's DOM after the browser parsed and laid it out."""
    result = run("--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def screenshot(page: Path, target: Path) -> Path:
    result = run(f"--screenshot={target}", "--window-size=1400,600", page.as_uri())
    assert result.returncode == 0 and target.is_file(), result.stderr[-2000:]
    return target


def loaded_images(page: Path) -> dict[str, int]:
    """The images of ``page`` as the browser loaded them: source -> natural width in pixels (0: the image
    is missing or could not be decoded). The page is copied next to itself with a script that writes the
    widths into the DOM once everything has loaded, so relative sources resolve as on the page."""
    probe = page.with_name(f".probe-{page.name}")
    script = (
        "<script>window.addEventListener('load', () => { const out = document.createElement('pre');"
        " out.id = 'loaded-images'; out.textContent = JSON.stringify(Array.from(document.images,"
        " i => [i.getAttribute('src'), i.naturalWidth])); document.body.appendChild(out); });</script>"
    )
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    try:
        result = run("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    finally:
        probe.unlink()
    assert result.returncode == 0, result.stderr[-2000:]
    start = result.stdout.find('<pre id="loaded-images">')
    assert start >= 0, "the page never finished loading: " + result.stdout[-2000:]
    text = result.stdout[start + len('<pre id="loaded-images">') :].split("</pre>", 1)[0]
    return {src: width for src, width in json.loads(html.unescape(text))}
