"""Open a page (the training page RUN/index.html, evaluate.py's RUN/eval/index.html) in a real headless
browser: every player loads, every picture decodes, nothing comes from the network; then a screenshot.

Reading the HTML is not enough: a player can point at a missing file or at audio the browser cannot
decode, a picture at a PNG it cannot read. This script serves the page's folder on 127.0.0.1 only,
opens a small checking page in headless Chromium (a Debian package: `apt-get install chromium`), which
reads index.html, loads the metadata of every <audio> source and every <img>, and prints one line each
(a player's duration, a picture's natural size, or the error); a link or source on another host is an
error (the pages must work offline). Then it writes screenshot.png beside the page. Exit code 0 if
everything loaded, 1 if something did not, 2 if the page or the browser is missing.

    python -m experiments.check_page runs/tiny/index.html       # the training page
    python -m experiments.check_page runs/tiny/eval/index.html  # the evaluation page
"""
import argparse
import functools
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

CHECK = b"""<!doctype html><html><body>waiting<script>
fetch('index.html').then(r => r.text()).then(text => {
  const page = new DOMParser().parseFromString(text, 'text/html');
  const players = [...page.querySelectorAll('audio')].map(a => a.getAttribute('src'));
  const images = [...page.querySelectorAll('img')].map(i => i.getAttribute('src'));
  const external = [...page.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'))
    .filter(u => /^(https?:)?\/\//.test(u));
  const lines = external.map(u => 'ERROR external ' + u);
  const total = players.length + images.length;
  let done = 0;
  const finish = () => { if (++done >= total) document.body.textContent = 'RESULT\\n' + lines.join('\\n') + '\\nEND'; };
  if (!total) { done = -1; finish(); }
  players.forEach((src) => {
    const audio = new Audio();
    audio.preload = 'metadata';
    audio.onloadedmetadata = () => { lines.push('ok player ' + audio.duration.toFixed(2) + ' s ' + src); finish(); };
    audio.onerror = () => { lines.push('ERROR player ' + (audio.error ? audio.error.code : '?') + ' ' + src); finish(); };
    audio.src = src;
  });
  images.forEach((src) => {
    const image = new Image();
    image.onload = () => { lines.push((image.naturalWidth > 0 ? 'ok image ' : 'ERROR image ') + image.naturalWidth + 'x'
                                      + image.naturalHeight + ' ' + src); finish(); };
    image.onerror = () => { lines.push('ERROR image ' + src); finish(); };
    image.src = src;
  });
});
</script></body></html>"""


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/__check__.html":  # the checking page, served beside the page under test
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(CHECK)
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


def main(argv=None):
    p = argparse.ArgumentParser(description="Check in headless Chromium that every player and picture of a page loads.")
    p.add_argument("page", help="RUN/index.html (train.py) or RUN/eval/index.html (evaluate.py)")
    p.add_argument("--browser", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = p.parse_args(argv)
    page = Path(args.page)
    if not page.is_file() or not Path(args.browser).is_file():
        print(f"error: {page if not page.is_file() else args.browser} not found", file=sys.stderr)
        sys.exit(2)
    # Virtual time can run out while a busy machine still serves the files: try again, up to 3 times.
    for attempt in range(3):
        output, errors = run_checking_page(args.browser, page)
        found = re.search(r"RESULT\n(.*?)\nEND", output.replace("&amp;", "&"), re.S)
        if found:
            break
    else:
        print("error: the checking page did not finish (browser output below)\n" + errors[-2000:], file=sys.stderr)
        sys.exit(1)
    lines = [line for line in found.group(1).splitlines() if line]
    print("\n".join(lines))
    failed = [line for line in lines if not line.startswith("ok ")]
    players, images = (sum(f"ok {kind} " in line for line in lines) for kind in ("player", "image"))
    print(f"{players} players and {images} pictures loaded, {len(failed)} failed")
    shot = screenshot(args.browser, page, page.parent / "screenshot.png")
    print(f"screenshot: {shot}" if shot else "no screenshot (the browser wrote none)")
    sys.exit(1 if failed or not lines else 0)


def run_checking_page(browser: str, page: Path):
    """(the DOM the checking page leaves, the browser's stderr), served from the page's folder."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(page.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as profile:
            result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                     f"--user-data-dir={profile}", "--virtual-time-budget=60000", "--dump-dom",
                                     f"http://127.0.0.1:{server.server_address[1]}/__check__.html"],
                                    capture_output=True, text=True, timeout=180)
    finally:
        server.shutdown()
    return result.stdout, result.stderr


def screenshot(browser: str, page: Path, path: Path, width: int = 1200, height: int = 2400):
    """The page as the browser renders it, the first `height` pixels, into `path` (or None)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(page.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                            "--disable-background-networking", "--hide-scrollbars", f"--user-data-dir={profile}",
                            f"--window-size={width},{height}", f"--screenshot={path}", "--virtual-time-budget=10000",
                            f"http://127.0.0.1:{server.server_address[1]}/{page.name}"],
                           capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    return path if path.exists() else None


if __name__ == "__main__":
    main()
