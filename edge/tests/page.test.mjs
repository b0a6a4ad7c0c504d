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

const titles = (page) => page.$$eval("#results li a, #results li span", (items) => items.map((item) => item.textContent));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function expectedTitles(q, offset) {
  const body = await (await fetch(`${worker.url}/search?q=${q}&limit=10&offset=${offset}&format=v2`)).json();
  return body.results.map((result) => result.title || "(untitled)");
}

test("the newest search wins, and paging keeps the submitted query", async () => {
  const page = await browser.newPage();
  await page.goto(worker.url + "/");
  // The first search's answer arrives after the second's.
  await page.route((url) => url.pathname === "/search" && url.searchParams.get("q") === "ka",
    async (route) => { await sleep(500); await route.continue(); });
  await page.fill("#q", "ka");
  await page.click("button[type=submit]");
  await page.fill("#q", "lo");
  await page.click("button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("Results 1–"));
  await sleep(800);
  assert.deepEqual(await titles(page), await expectedTitles("lo", 0), "the late answer for ka was dropped");

  await page.fill("#q", "edited but not submitted");
  await page.click("#next");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("Results 11"));
  assert.deepEqual(await titles(page), await expectedTitles("lo", 10));
});

test("an answer that is not JSON is reported, not left searching", async () => {
  const page = await browser.newPage();
  await page.goto(worker.url + "/");
  await page.route((url) => url.pathname === "/search",
    (route) => route.fulfill({ status: 502, contentType: "text/html", body: "<h1>Bad gateway</h1>" }));
  await page.fill("#q", "ka");
  await page.click("button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("Search failed"));
  assert.match(await page.textContent("#status"), /\(502\)/);
});
