#!/usr/bin/env python3
"""Screenshot of a running dashboard, once the page has drawn (standard library only).

    python3 .ci/tools/dashboard_screenshot.py http://127.0.0.1:8080/?token=T docs/dashboard.png

Drives Debian's chromium through chromedriver (both on PATH) over the W3C
WebDriver protocol: opens the page in a 1280x1750 headless window, waits for
`document.body.dataset.ready == "1"` and every area of the map, saves the PNG.
This is how docs/dashboard.png is made (see the README).
"""
import base64
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["value"]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    url, out = sys.argv[1], sys.argv[2]
    browser = shutil.which("chromium") or sys.exit("chromium is not on PATH")
    driver = shutil.which("chromedriver") or sys.exit("chromedriver is not on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                call(base, "GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": browser,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--hide-scrollbars", "--window-size=1280,1750"]}}}}
        sid = call(base, "POST", "/session", caps)["sessionId"]
        sess = f"/session/{sid}"
        call(base, "POST", sess + "/url", {"url": url})
        ready = ("return document.body.dataset.ready === '1' && "
                 "document.querySelectorAll('#map path[data-area]').length === 21")
        for _ in range(300):
            if call(base, "POST", sess + "/execute/sync", {"script": ready, "args": []}):
                break
            time.sleep(0.1)
        else:
            sys.exit("the page did not get ready in 30 s")
        time.sleep(0.5)
        png = base64.b64decode(call(base, "GET", sess + "/screenshot"))
        with open(out, "wb") as f:
            f.write(png)
        call(base, "DELETE", sess)
        print(f"wrote {out} ({len(png)} bytes)")
    finally:
        proc.kill()


if __name__ == "__main__":
    main()
