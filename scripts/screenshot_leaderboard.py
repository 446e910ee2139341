"""Screenshots a leaderboard page in headless Chromium, to check that the static site renders from disk.

Usage::

    python scripts/screenshot_leaderboard.py leaderboards/site/demo@smoke.html leaderboard.png

Exits 2 with a message when no Chromium is installed (``chromium`` or ``chromium-browser`` on PATH, or
``/usr/bin/chromium``). The browser runs with networking side channels disabled and a throw-away profile, so the
screenshot shows exactly what a reader opening the file from disk sees.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium")
TIMEOUT_SECONDS = 120


def find_chromium() -> str | None:
    """The first Chromium executable found, or ``None``."""
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def screenshot(page: Path, output: Path, width: int = 1400, height: int = 1600, chromium: str | None = None) -> Path:
    """Renders ``page`` (an HTML file) in headless Chromium and saves a PNG screenshot.

    Args:
        page: The HTML file to open (as a file:// URL, no server).
        output: The PNG to write.
        width: Window width in pixels.
        height: Window height in pixels.
        chromium: The browser executable (default: :func:`find_chromium`).

    Returns:
        ``output``.

    Raises:
        FileNotFoundError: No Chromium, or the page does not exist.
        RuntimeError: Chromium exited without writing the screenshot.
    """
    browser = chromium or find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found (install the chromium package)")
    if not page.is_file():
        raise FileNotFoundError(f"{page} does not exist; render the site with `mige-bench leaderboard` first")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--screenshot={output.resolve()}",
            page.resolve().as_uri(),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False)
    if not output.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot (exit {completed.returncode}): {completed.stderr[-2000:]}")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="HTML page of the site, e.g. leaderboards/site/index.html")
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1600)
    args = parser.parse_args(argv)
    try:
        print(screenshot(args.page, args.output, args.width, args.height))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
