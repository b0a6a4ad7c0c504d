// The search page in a real browser (Debian's Chromium via playwright-core) against the Worker
// in workerd: type a query, see highlighted results, page forward and back.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";
import { publishSnapshots, objectsUnder, startWorker } from "./support.mjs";

const CHROMIUM = "/usr/bin/chromium";
let worker;
let browser;

before(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} missing: run scripts/install-toolchain.sh`);
  const snapshots = publishSnapshots(1500, 1);
  worker = await startWorker();
  for (const [key, bytes] of objectsUnder(snapshots.published)) await worker.bucket.put(key, Uint8Array.from(bytes));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  await worker?.mf.dispose();
});

test("type a query, see results, page forward and back", async () => {
  const page = await browser.newPage();
  await page.goto(worker.url + "/");
  await page.fill("#q", "ka");
  await page.click("button[type=submit]");
  await page.waitForSelector("#results li");
  const first = await page.$$eval("#results li a", (links) => links.map((a) => a.textContent));
  assert.equal(first.length, 10);
  assert.ok(await page.$("#results mark"), "matches are highlighted");
  assert.match(await page.textContent("#status"), /Results 1–10/);
  assert.equal(await page.isHidden("#prev"), true);

  await page.click("#next");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("Results 11"));
  const second = await page.$$eval("#results li a", (links) => links.map((a) => a.textContent));
  assert.equal(second.length, 10);
  assert.notDeepEqual(second, first);

  await page.click("#prev");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("Results 1–"));
  assert.deepEqual(await page.$$eval("#results li a", (links) => links.map((a) => a.textContent)), first);

  if (process.env.PUBSEARCH_SCREENSHOT) await page.screenshot({ path: process.env.PUBSEARCH_SCREENSHOT, fullPage: true });
});

test("an error is shown, not an empty list", async () => {
  const page = await browser.newPage();
  await page.goto(worker.url + "/");
  await page.fill("#q", "*** ()");
  await page.click("button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#status").textContent.includes("empty query"));
  assert.equal(await page.$$eval("#results li", (items) => items.length), 0);
});
