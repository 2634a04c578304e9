"""Open evaluate.py's listening page in a real headless browser and check that every player loads.

Reading the HTML is not enough: a player can point at a missing file or at audio the browser cannot
decode. This script serves the page's folder on 127.0.0.1 only, opens a small checking page in
headless Chromium (a Debian package: `apt-get install chromium`), which reads index.html, loads the
metadata of every <audio> source and reports its duration or its error, and prints one line a player.
Exit code 0 if every player loaded, 1 if one did not, 2 if the page or the browser is missing.

    python -m experiments.check_page runs/tiny/eval/index.html
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
  const sources = [...page.querySelectorAll('audio')].map(a => a.getAttribute('src'));
  const lines = [];
  let done = 0;
  const finish = () => { if (++done >= sources.length) document.body.textContent = 'RESULT\\n' + lines.join('\\n') + '\\nEND'; };
  if (!sources.length) { done = -1; finish(); }
  sources.forEach((src, i) => {
    const audio = new Audio();
    audio.preload = 'metadata';
    audio.onloadedmetadata = () => { lines[i] = 'ok ' + audio.duration.toFixed(2) + ' s ' + src; finish(); };
    audio.onerror = () => { lines[i] = 'ERROR ' + (audio.error ? audio.error.code : '?') + ' ' + src; finish(); };
    audio.src = src;
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
    p = argparse.ArgumentParser(description="Check in headless Chromium that every player of a listening page loads.")
    p.add_argument("page", help="index.html written by evaluate.py")
    p.add_argument("--browser", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = p.parse_args(argv)
    page = Path(args.page)
    if not page.is_file() or not Path(args.browser).is_file():
        print(f"error: {page if not page.is_file() else args.browser} not found", file=sys.stderr)
        sys.exit(2)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(page.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as profile:
            result = subprocess.run([args.browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                     f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom",
                                     f"http://127.0.0.1:{server.server_address[1]}/__check__.html"],
                                    capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    found = re.search(r"RESULT\n(.*?)\nEND", result.stdout.replace("&amp;", "&"), re.S)
    if not found:
        print("error: the checking page did not finish (browser output below)\n" + result.stderr[-2000:], file=sys.stderr)
        sys.exit(1)
    lines = [line for line in found.group(1).splitlines() if line]
    print("\n".join(lines))
    failed = [line for line in lines if not line.startswith("ok ")]
    print(f"{len(lines) - len(failed)} of {len(lines)} players loaded")
    sys.exit(1 if failed or not lines else 0)


if __name__ == "__main__":
    main()
