#!/usr/bin/env python3
"""The web view while the main example is killed and resumed, in a headless browser.

What the README's "Web view" section promises, checked end to end with the real binaries:

1. `provision_cluster --store DB --fault slow-start` starts the durable run `cluster`;
   `flowctl --store DB serve` serves the web view of that store;
2. headless chromium (driven over WebDriver by chromedriver) opens the run's page;
3. as soon as the run's first step (`launch_nodes`) is committed, the example is killed with
   SIGKILL, mid-run (by a thread that watches the store, whatever the browser is doing): the
   page must still show the run (running, `launch_nodes` done);
4. the example is started again with the same store: it resumes the run and finishes it;
5. the page, never reloaded (a mark set in the document survives), must show the run
   completed with every step done, through its live updates (server-sent events) alone.

Screenshots of each stage go to the output directory (default /tmp/web-check/). Exit status
0 when every check held, 1 otherwise (saying which), 2 when something is missing.

    cargo build --example provision_cluster -p flow && cargo build -p flowctl
    bash scripts/install-browser.sh
    python3 scripts/web-kill-resume.py [--target DIR] [--out DIR] [--kill-after NODE]

The binaries are taken from `--target` (default: $CARGO_TARGET_DIR, else ./target), in its
`debug/` directory. Every process it starts is ended at the end, by its process group.
"""

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

TOKEN = "kill-resume-check"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(what, check, timeout=20.0, every=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


class Failed(Exception):
    pass


class Browser:
    """A chromedriver and one headless chromium session, over WebDriver's HTTP API."""

    def __init__(self, profile):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["chromedriver", f"--port={self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_for("chromedriver listening", lambda: self._up())
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": shutil.which("chromium") or "/usr/bin/chromium",
                        "args": [
                            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", "--disable-dev-shm-usage",
                            "--window-size=1400,1900", f"--user-data-dir={profile}",
                        ],
                    },
                }
            }
        }
        status, body = http("POST", f"{self.base}/session", caps, timeout=60)
        if status != 200:
            raise Failed(f"no WebDriver session: {status} {body[:500]!r}")
        self.session = json.loads(body)["value"]["sessionId"]

    def _up(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _call(self, method, path, body=None):
        status, raw = http(method, f"{self.base}/session/{self.session}{path}", body)
        value = json.loads(raw).get("value") if raw else None
        if status != 200:
            raise Failed(f"WebDriver {method} {path}: {status} {value}")
        return value

    def goto(self, url):
        self._call("POST", "/url", {"url": url})

    def js(self, script, *args):
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self, path):
        with open(path, "wb") as f:
            f.write(base64.b64decode(self._call("GET", "/screenshot")))

    def close(self):
        try:
            http("DELETE", f"{self.base}/session/{self.session}", timeout=10)
        except Exception:
            pass
        stop_group(self.proc)


def stop_group(proc):
    """Ends `proc` and whatever it started in its process group (ours alone)."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# What the page shows, read in one script (a live update may replace the graph between two
# WebDriver calls): the run's status, each graph node's state, the live part's last update.
PAGE_STATE = """
var live = document.getElementById('live');
var summary = live && live.querySelector('.summary');
var nodes = {};
if (live) live.querySelectorAll('g.node').forEach(function (n) {
  var m = / state-([a-z]+)/.exec(' ' + n.getAttribute('class'));
  nodes[n.getAttribute('data-key')] = m ? m[1] : '?';
});
return {
  status: summary ? summary.getAttribute('data-status') : null,
  nodes: nodes,
  updated: live ? live.getAttribute('data-updated') : null,
  same_document: window.__flowSameDocument === true,
  banner: (document.getElementById('store-state') || {}).textContent || '',
};
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default=os.environ.get("CARGO_TARGET_DIR", "target"))
    ap.add_argument("--out", default="/tmp/web-check")
    ap.add_argument("--kill-after", default="launch_nodes",
                    help="kill the example once this step is committed (default launch_nodes)")
    args = ap.parse_args()
    # The processes run in a temporary directory: absolute paths.
    args.target = os.path.abspath(args.target)
    args.out = os.path.abspath(args.out)
    example = os.path.join(args.target, "debug", "examples", "provision_cluster")
    flowctl = os.path.join(args.target, "debug", "flowctl")
    for path, build in [(example, "cargo build --example provision_cluster -p flow"),
                        (flowctl, "cargo build -p flowctl")]:
        if not os.access(path, os.X_OK):
            print(f"missing {path}: build it with `{build}`", file=sys.stderr)
            return 2
    for tool in ["chromium", "chromedriver"]:
        if not shutil.which(tool):
            print(f"missing {tool}: bash scripts/install-browser.sh installs it", file=sys.stderr)
            return 2
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="flow-web-kill-resume-")
    db = os.path.join(work, "runs.db")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs = []
    browser = None
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def start(cmd, name):
        out = open(os.path.join(args.out, f"{name}.log"), "wb")
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, cwd=work)
        procs.append(p)
        return p

    def live_part():
        status, body = http("GET", f"{base}/runs/cluster/live", timeout=5)
        return body.decode("utf-8", "replace") if status == 200 else ""

    try:
        browser = Browser(os.path.join(work, "profile"))
        browser.goto("about:blank")
        log("browser ready")

        first = start([example, "--store", db, "--fault", "slow-start"], "example-1")
        wait_for("the store file", lambda: os.path.exists(db))
        server = start([flowctl, "--store", db, "serve", "--port", str(port), "--token", TOKEN],
                       "serve")
        wait_for("the web view answering", lambda: _answers(f"{base}/healthz"))
        wait_for("the run `cluster` in the store", lambda: live_part() != "")

        # Kill the example as soon as the step is committed (read from the store, not the
        # page), from a thread of its own: the kill never waits for the browser, so a slow
        # page load cannot let the run finish first.
        kill_marker = f'data-key="{args.kill_after}"'
        killed = threading.Event()
        kill_error = []

        def committed():
            html = live_part()
            at = html.find(kill_marker)
            return at >= 0 and "state-done" in html[html.rfind("<g ", 0, at):at]

        def killer():
            try:
                wait_for(f"`{args.kill_after}` committed", committed, timeout=30, every=0.02)
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
            except Exception as e:  # reported by the main thread
                kill_error.append(e)
            killed.set()

        threading.Thread(target=killer, daemon=True).start()
        browser.goto(f"{base}/runs/cluster#token={TOKEN}")
        browser.js("window.__flowSameDocument = true; return true;")
        state = browser.js(PAGE_STATE)
        opened_before_kill = not killed.is_set()
        log(f"page open ({'before' if opened_before_kill else 'after'} the kill): "
            f"status {state['status']}, nodes {state['nodes']}")
        browser.screenshot(os.path.join(args.out, "1-open.png"))
        if not killed.wait(timeout=40) or kill_error:
            raise Failed(f"the example was not killed: {kill_error}")
        log(f"example killed with SIGKILL after `{args.kill_after}` (exit {first.returncode})")
        # Give the page a few of its polls: it must still show the run, unfinished.
        time.sleep(2.0)
        state = browser.js(PAGE_STATE)
        log(f"page after the kill: status {state['status']}, nodes {state['nodes']}, "
            f"banner {state['banner']!r}")
        browser.screenshot(os.path.join(args.out, "2-killed.png"))
        problems = []
        if state["status"] != "running":
            problems.append(f"after the kill the page says {state['status']}, not running")
        if state["nodes"].get(args.kill_after) != "done":
            problems.append(f"after the kill `{args.kill_after}` is {state['nodes'].get(args.kill_after)}")
        if any(s == "done" for k, s in state["nodes"].items() if k == "stop_cluster"):
            problems.append("the last step is done although the run was killed")
        updated_at_kill = state["updated"]

        second = start([example, "--store", db, "--fault", "slow-start"], "example-2")
        code = second.wait(timeout=120)
        with open(os.path.join(args.out, "example-2.log"), "rb") as f:
            said = f.read().decode("utf-8", "replace")
        log(f"example run again: exit {code}; it said it resumes: {'resuming run `cluster`' in said}")
        if code != 0:
            problems.append(f"the resumed example exited with {code}")
        if "resuming run `cluster`" not in said:
            problems.append("the second example did not say it resumed the run")

        def finished_on_page():
            s = browser.js(PAGE_STATE)
            return s if s["status"] in ("completed", "failed", "cancelled") else None

        state = wait_for("the page showing the run finished", finished_on_page, timeout=15)
        time.sleep(1.0)  # the last poll's update, if any
        state = browser.js(PAGE_STATE)
        log(f"page after the resume: status {state['status']}, nodes {state['nodes']}, "
            f"same document {state['same_document']}")
        browser.screenshot(os.path.join(args.out, "3-resumed.png"))
        if state["status"] != "completed":
            problems.append(f"the page says {state['status']}, not completed")
        not_done = {k: s for k, s in state["nodes"].items() if s != "done"}
        if not_done:
            problems.append(f"nodes not done on the page: {not_done}")
        if not state["same_document"]:
            problems.append("the page was reloaded (the document's mark is gone)")
        if state["updated"] == updated_at_kill:
            problems.append("no live update reached the page after the resume")
        if not opened_before_kill:
            log("note: the page opened after the kill (the machine is slow): it watched the "
                "resume, not the kill")
        # The page as served afresh says the same.
        status, body = http("GET", f"{base}/runs/cluster")
        if status != 200 or 'data-status="completed"' not in body.decode("utf-8", "replace"):
            problems.append(f"GET /runs/cluster: {status}, not a completed run")
        server.send_signal(signal.SIGTERM)
        if problems:
            raise Failed("; ".join(problems))
        log(f"OK: killed mid-run, resumed, and the open page followed; screenshots in {args.out}")
        return 0
    except Failed as e:
        log(f"FAILED: {e}")
        if browser is not None:
            try:
                browser.screenshot(os.path.join(args.out, "failed.png"))
            except Exception:
                pass
        return 1
    finally:
        if browser is not None:
            browser.close()
        for p in procs:
            stop_group(p)
        shutil.rmtree(work, ignore_errors=True)


def _answers(url):
    try:
        return http("GET", url, timeout=2)[0] == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
