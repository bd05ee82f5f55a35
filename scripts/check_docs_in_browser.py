"""One look at the built docs in a real browser: does the maths render, and is the console clean?

Builds the site with ``mkdocs build --strict`` into a temporary directory (or takes an already
built one with ``--site DIR``), serves it on localhost with Python's ``http.server`` in a
thread, opens the tutorial page and the API page ``api/index.html`` (which has maths from the
equation functions' docstrings) in headless Chromium, and checks

1. the maths rendered: elements with class ``katex`` exist, every ``.arithmatex`` element holds
   one, no KaTeX error markup is present, and no raw ``\\[`` / ``\\(`` delimiter remains in the
   text of an ``.arithmatex`` element outside the rendered maths;
2. no console errors and no uncaught page errors;
3. the site is self-contained: requests to anywhere but the local server are refused and
   reported (this machine has no internet, and the docs should not depend on it);

and saves a PNG screenshot of the tutorial (viewport scrolled to its first displayed formula)
to ``--screenshot``, plus one of the API page beside it (``<stem>-api.png``).

Exit status 0 when every check passes, 1 with a message per failure otherwise.

Needs:
    * Chromium at /usr/bin/chromium (Debian: ``apt-get install -y chromium``), or ``--chromium``;
    * the Python package ``playwright`` (``.venv/bin/pip install playwright``). Its own browser
      download (``playwright install``) is NOT needed: the script drives the system Chromium.

Usage:
    .venv/bin/python scripts/check_docs_in_browser.py --screenshot /tmp/tutorial.png
    .venv/bin/python scripts/check_docs_in_browser.py --site site/
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
# page name -> (path in the site, whether it must hold maths)
PAGES = {"tutorial": ("tutorial/index.html", False), "api": ("api/index.html", True)}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Runs in the page: what the maths on it looks like after KaTeX had its go.
MATH_STATE_JS = """() => {
  const blocks = [...document.querySelectorAll('.arithmatex')];
  const raw = [];
  let unrendered = 0;
  for (const el of blocks) {
    if (!el.querySelector('.katex')) unrendered += 1;
    const copy = el.cloneNode(true);
    copy.querySelectorAll('.katex').forEach((k) => k.remove());
    const text = copy.textContent;
    if (text.includes('\\\\[') || text.includes('\\\\(')) raw.push(text.trim().slice(0, 80));
  }
  return {
    arithmatex: blocks.length,
    katex: document.querySelectorAll('.katex').length,
    katexErrors: document.querySelectorAll('.katex-error').length,
    unrendered,
    raw,
  };
}"""

RENDERED_JS = """() => [...document.querySelectorAll('.arithmatex')].every(
  (el) => el.querySelector('.katex'))"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def build_site(root: Path, out: Path) -> None:
    """``mkdocs build --strict`` of the project at ``root`` into ``out``."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)]
    print(f"building the site: {' '.join(cmd)} (in {root})", flush=True)
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"FAIL: mkdocs build exited with {done.returncode}")


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``site`` on a free localhost port from a daemon thread; returns server and base URL."""
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def check_page(
    browser, base: str, name: str, path: str, needs_maths: bool, shot: Path, timeout_ms: int
) -> list[str]:
    """Open one page, check its maths and console, save a screenshot; returns the failures."""
    failures: list[str] = []
    console: list[str] = []
    external: list[str] = []
    local_host = urlparse(base).netloc

    page = browser.new_page(viewport={"width": 1280, "height": 900})

    def on_console(msg):
        console.append(f"[{msg.type}] {msg.text}")
        if msg.type == "error":
            failures.append(f"{name}: console error: {msg.text}")

    def on_route(route):
        url = route.request.url
        if urlparse(url).netloc == local_host or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            external.append(url)
            route.abort()

    page.on("console", on_console)
    page.on("pageerror", lambda err: failures.append(f"{name}: uncaught page error: {err}"))
    page.route("**/*", on_route)

    url = base + path
    print(f"\n== {name}: {url}", flush=True)
    response = page.goto(url, wait_until="load")
    if response is None or not response.ok:
        status = response.status if response else "no response"
        failures.append(f"{name}: could not load {url} ({status})")
        page.close()
        return failures
    try:
        page.wait_for_function(RENDERED_JS, timeout=timeout_ms)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError; reported by the checks below
        pass
    page.wait_for_load_state("networkidle")

    state = page.evaluate(MATH_STATE_JS)
    print(
        f"maths: {state['arithmatex']} .arithmatex elements, {state['katex']} .katex elements, "
        f"{state['unrendered']} unrendered, {state['katexErrors']} .katex-error, "
        f"{len(state['raw'])} with raw delimiters",
        flush=True,
    )
    if needs_maths and state["arithmatex"] == 0:
        failures.append(f"{name}: no .arithmatex element: the page has no maths to check")
    if state["arithmatex"] and state["katex"] == 0:
        failures.append(f"{name}: no .katex element: KaTeX did not render anything")
    if state["unrendered"]:
        failures.append(
            f"{name}: {state['unrendered']} .arithmatex element(s) without KaTeX output"
        )
    if state["katexErrors"]:
        failures.append(f"{name}: {state['katexErrors']} .katex-error element(s)")
    for text in state["raw"][:5]:
        failures.append(f"{name}: raw TeX delimiter left in the text: {text!r}")
    for ext in external:
        failures.append(f"{name}: the page asked for an external resource (refused): {ext}")

    print("console:" if console else "console: (empty)", flush=True)
    for line in console:
        print(f"  {line}", flush=True)

    first_display = page.locator("div.arithmatex .katex-display").first
    if first_display.count():
        first_display.scroll_into_view_if_needed()
        page.evaluate("() => window.scrollBy(0, -200)")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot))
    print(f"screenshot: {shot}", flush=True)
    page.close()
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, help="an already built site (default: build one)")
    parser.add_argument("--root", type=Path, default=ROOT, help="project to build (default: ours)")
    parser.add_argument(
        "--screenshot",
        type=Path,
        default=Path(tempfile.gettempdir()) / "functional_bp-docs-tutorial.png",
        help="PNG of the tutorial page; the API page goes beside it as <stem>-api.png",
    )
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for KaTeX")
    args = parser.parse_args(argv)

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("FAIL: the Python package playwright is missing (pip install playwright)")
        return 1
    if not Path(args.chromium).exists():
        print(f"FAIL: no Chromium at {args.chromium} (apt-get install chromium, or --chromium)")
        return 1

    with tempfile.TemporaryDirectory(prefix="functional_bp-site-") as tmp:
        site = args.site
        if site is None:
            site = Path(tmp) / "site"
            build_site(args.root.resolve(), site)
        missing = [p for p, _ in PAGES.values() if not (site / p).is_file()]
        if missing:
            print(f"FAIL: {site} lacks {', '.join(missing)}")
            return 1

        server, base = serve(site)
        shots = {
            "tutorial": args.screenshot,
            "api": args.screenshot.with_name(f"{args.screenshot.stem}-api.png"),
        }
        failures: list[str] = []
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                print(f"Chromium {browser.version}", flush=True)
                for name, (path, needs_maths) in PAGES.items():
                    failures += check_page(
                        browser,
                        base,
                        name,
                        path,
                        needs_maths,
                        shots[name],
                        int(args.timeout * 1000),
                    )
                browser.close()
        finally:
            server.shutdown()
            server.server_close()

    if failures:
        print(f"\nFAIL: {len(failures)} problem(s):")
        for failure in failures:
            print(f"  - {failure}")
        return 1
    print(f"\nOK: maths rendered, no console errors on {len(PAGES)} pages, no external requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
