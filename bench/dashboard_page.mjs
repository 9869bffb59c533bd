// The dashboard page in headless Chromium (bench/dashboard_load.py): how long from opening it
// to the run's row showing every batch done, and whether it logged console errors.
//   node bench/dashboard_page.mjs URL RUN_ID BATCHES
import { chromium } from "playwright-core";

const [url, runId, batches] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium" });
const errors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  const opened = performance.now();
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(
    ([run, n]) => document.querySelector(`#runs tr[data-run="${run}"] .batches-done`)?.textContent === `${n}/${n}`,
    [runId, batches], { timeout: 60000, polling: 50 },
  );
  const renderedMs = performance.now() - opened;
  // One refresh cycle's cost inside the page: fetch the three endpoints and draw everything.
  const cycleMs = await page.evaluate(async () => {
    const t0 = performance.now();
    const [s, t, h] = await Promise.all(["/api/status", "/api/timeline", "/api/history"].map((p) => fetch(p).then((r) => r.json())));
    return { fetched_ms: performance.now() - t0, lanes: t.runs[0].lanes.length, points: h.points.length, status_runs: s.runs.length };
  });
  process.stdout.write(JSON.stringify({ rendered_ms: renderedMs, ...cycleMs, console_errors: errors }));
} finally {
  await browser.close();
}
