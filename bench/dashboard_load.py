"""The dashboard with a run of 1,000 small batches: response time and size of its page and JSON.

A local pool (`--nodes` SleepTask consumers, no sleep) drains a run of `--batches` batches of one
small image while `orchestration dashboard` serves it; during the run every endpoint is read once
a second (time, bytes as sent with gzip and as JSON), and after the drain `--repeats` times each.
Then headless Chromium (when installed) opens the page and times it to the run's row showing
every batch done. Goal: every endpoint under 100 ms (median) and the timeline under 100 KB as sent.

    python -m bench.dashboard_load [--batches 1000] [--nodes 2] [--repeats 20]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import ROOT, SLEEP_ENV, SLEEP_TASK, bench_settings, env, machine, samples, scratch_home
from orchestration.backends.local import LocalLauncher
from orchestration.reports.drain import wait_for_drain
from producer.enqueue import EnqueueRequest, enqueue
from workpool.handoff import child_env
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.storage import open_result_store

ENDPOINTS = ["/", "/static/app.js", "/api/status", "/api/timeline", "/api/history"]


def fetch(url: str) -> tuple[float, int, int]:
    """Milliseconds, bytes as sent (gzip when the server compresses), bytes of the body."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        sent = response.read()
        gzipped = response.headers.get("Content-Encoding") == "gzip"
    ms = (time.perf_counter() - started) * 1000
    return ms, len(sent), len(gzip.decompress(sent) if gzipped else sent)


def summary(samples_: list[tuple[float, int, int]]) -> dict[str, float]:
    times = sorted(s[0] for s in samples_)
    return {
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[min(len(times) - 1, int(len(times) * 0.95))], 1),
        "sent_kb": round(max(s[1] for s in samples_) / 1024, 1),
        "json_kb": round(max(s[2] for s in samples_) / 1024, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    source = samples(args.batches, (32, 24))
    with scratch_home("dashboard") as home, env(**{SLEEP_ENV: "0"}):
        settings = bench_settings(home, "dash", batch_size=1)
        queue = open_queue(settings)
        queue.create()
        launcher = LocalLauncher(settings, grace_s=10.0)
        launcher.launch(args.nodes)
        server = subprocess.Popen(
            [sys.executable, "-m", "orchestration", "dashboard", "--port", "0", "--interval-s", "1"],
            cwd=ROOT, env=child_env(settings), stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert server.stderr is not None
            found = re.search(r" on (http://\S+/) ", server.stderr.readline())
            if found is None:
                raise SystemExit("dashboard_load: the dashboard did not start")
            url = found[1]
            enqueue(settings, EnqueueRequest(source=str(source), run_id="big", task=SLEEP_TASK), progress_bar=False)
            runs = RunStore(open_result_store(settings))
            during: dict[str, list[tuple[float, int, int]]] = {p: [] for p in ENDPOINTS[2:]}
            refresh_s: list[float] = []
            while len(runs.record_batch_ids("big")) < args.batches:
                for path in during:
                    during[path].append(fetch(url.rstrip("/") + path))
                meta = json.loads(urllib.request.urlopen(url + "api/history", timeout=30).read())
                if meta["refresh_s"] is not None:
                    refresh_s.append(meta["refresh_s"])
                time.sleep(1.0)
            wait_for_drain(runs, queue, "big", poll_s=0.25)
            time.sleep(2.5)  # the dashboard's next refresh sees the whole run
            after = {p: [fetch(url.rstrip("/") + p) for _ in range(args.repeats)] for p in ENDPOINTS}
            page = None
            if shutil.which("node") and Path("/usr/bin/chromium").exists():
                out = subprocess.run(
                    ["node", str(ROOT / "bench" / "dashboard_page.mjs"), url, "big", str(args.batches)],
                    cwd=ROOT, capture_output=True, text=True, check=True, timeout=120,
                )  # fmt: skip
                page = json.loads(out.stdout)
        finally:
            server.terminate()
            server.wait(20)
            launcher.teardown()
    figures = {
        "machine": machine(),
        "batches": args.batches,
        "during_run": {p: summary(s) for p, s in during.items() if s},
        "after_drain": {p: summary(s) for p, s in after.items()},
        "feed_refresh_s_median": round(statistics.median(refresh_s), 3) if refresh_s else None,
        "chromium": page,
    }
    print(f"dashboard_load on {figures['machine']}: {args.batches} batches, {args.nodes} local node(s)")
    for when in ("during_run", "after_drain"):
        for path, s in figures[when].items():
            print(f"  {when:11} {path:15} median {s['median_ms']:7.1f} ms  p95 {s['p95_ms']:7.1f} ms  "
                  f"{s['sent_kb']:7.1f} KB sent ({s['json_kb']:.1f} KB)")  # fmt: skip
    print(f"  the dashboard's refresh (status + timeline of {args.batches} batches): median "
          f"{figures['feed_refresh_s_median']} s")  # fmt: skip
    if page is not None:
        errors = len(page["console_errors"])
        print(f"  Chromium: page to {args.batches}/{args.batches} shown in {page['rendered_ms']:.0f} ms; "
              f"one refresh's fetches {page['fetched_ms']:.0f} ms; console errors: {errors}")  # fmt: skip
    return figures


if __name__ == "__main__":
    main()
