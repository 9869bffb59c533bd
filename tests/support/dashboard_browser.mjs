// Drives the system's Chromium (Debian's `chromium`) through playwright-core for the dashboard
// test: opens the page, reads the rendered DOM as the run moves, saves a screenshot, and prints
// one JSON document of what it saw (the Python test asserts on it).
//
//   node tests/support/dashboard_browser.mjs URL RUN_ID SCREENSHOT TIMEOUT_S
//
// It waits for the run's row, then for its done count to change, then for the run to finish
// (the ETA cell says "done") and the GPU column to fill, so the screenshot shows a whole run.
import { chromium } from "playwright-core";

const [url, runId, screenshot, timeoutText] = process.argv.slice(2);
const timeoutMs = Number(timeoutText || "120") * 1000;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-gpu"] });
const seen = { console_errors: [], page_errors: [], failed_requests: [], samples: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("console", (m) => { if (m.type() === "error") seen.console_errors.push(m.text()); });
  page.on("pageerror", (e) => seen.page_errors.push(String(e)));
  page.on("requestfailed", (r) => seen.failed_requests.push(`${r.url()}: ${r.failure()?.errorText}`));
  const opened = Date.now();
  await page.goto(url, { waitUntil: "load" });
  seen.title = await page.title();
  const row = `#runs tr[data-run="${runId}"]`;
  await page.waitForSelector(row, { timeout: timeoutMs });
  seen.loaded_ms = Date.now() - opened;
  const sample = async () => page.$eval(row, (tr) => ({
    run: tr.querySelector(".run-id").textContent,
    done: tr.querySelector(".batches-done").textContent,
    eta: tr.querySelector(".eta").textContent,
    gpu: tr.querySelector(".gpu").textContent,
    at_ms: Date.now(),
  }));
  seen.samples.push(await sample());
  const first = seen.samples[0].done;
  await page.waitForFunction(
    ([sel, was]) => document.querySelector(sel)?.querySelector(".batches-done")?.textContent !== was,
    [row, first], { timeout: timeoutMs, polling: 200 },
  );
  seen.samples.push(await sample());
  await page.waitForFunction(
    (sel) => {
      const tr = document.querySelector(sel);
      return tr?.querySelector(".eta")?.textContent === "done" && tr.querySelector(".gpu").textContent !== "—";
    },
    row, { timeout: timeoutMs, polling: 250 },
  );
  // One more refresh after the end, so the charts show the last acks.
  const updated = await page.textContent("#updated");
  await page.waitForFunction((was) => document.querySelector("#updated").textContent !== was, updated,
    { timeout: timeoutMs, polling: 250 });
  seen.samples.push(await sample());
  seen.nodes = await page.$$eval("#nodes tbody tr", (rows) => rows.map((r) => r.dataset.node));
  seen.queue = await page.textContent("#queue-name");
  seen.cost = await page.textContent("#q-cost");
  seen.lanes_title = await page.textContent("#lanes-run");
  seen.decisions = await page.$$eval("#decisions li", (items) => items.map((i) => i.textContent));
  seen.html = await page.content();
  await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(seen));
