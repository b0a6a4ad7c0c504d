// The search page in a real browser (Debian's Chromium via playwright-core) against the Worker
// in workerd: searching, paging, the search in the URL (links, reload, back and forward), the
// first page rendered without JavaScript, filters, the search mode, tag chips, author links, the keyboard, dark
// mode and a phone-sized screen. Screenshots at 1280×900 and 390×844 are written to
// target/page-screenshots/ and named in the test output.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { publishSnapshots, objectsUnder, startWorker, ROOT } from "./support.mjs";

const CHROMIUM = "/usr/bin/chromium";
const SCREENSHOTS = join(ROOT, "target", "page-screenshots");
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

const titles = (page) => page.$$eval("#results .title", (items) => items.map((item) => item.textContent));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const statusStarts = (page, text) =>
  page.waitForFunction((text) => document.querySelector("#status").textContent.startsWith(text), text);

async function expected(params) {
  const query = new URLSearchParams({ limit: 10, format: "v2", ...params });
  const body = await (await fetch(`${worker.url}/search?${query}`)).json();
  return body.results;
}

async function expectedTitles(q, offset, filters = {}) {
  return (await expected({ q, offset, ...filters })).map((result) => result.title || "(untitled)");
}

test("type a query, see results, page forward and back", async () => {
  const page = await browser.newPage();
  await page.goto(worker.url + "/");
  await page.fill("#q", "ka");
  await page.click("button[type=submit]");
  await page.waitForSelector("#results li");
  const first = await titles(page);
  assert.equal(first.length, 10);
  assert.deepEqual(first, await expectedTitles("ka", 0));
  assert.ok(await page.$("#results mark"), "matches are highlighted");
  assert.match(await page.textContent("#status"), /Results 1–10/);
  assert.equal(await page.isHidden("#prev"), true);

  await page.click("#next");
  await statusStarts(page, "Results 11");
  const second = await titles(page);
  assert.equal(second.length, 10);
  assert.notDeepEqual(second, first);

  await page.click("#prev");
  await statusStarts(page, "Results 1–");
  assert.deepEqual(await titles(page), first);
});

test("an error is shown, not an empty list", async () => {
  const page = await browser.newPage();
  await page.goto(worker.url + "/");
  await page.fill("#q", "*** ()");
  await page.click("button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#status").textContent.includes("empty query"));
  assert.equal(await page.$$eval("#results li", (items) => items.length), 0);
});

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
  await statusStarts(page, "Results 1–");
  await sleep(800);
  assert.deepEqual(await titles(page), await expectedTitles("lo", 0), "the late answer for ka was dropped");

  await page.fill("#q", "edited but not submitted");
  await page.click("#next");
  await statusStarts(page, "Results 11");
  assert.deepEqual(await titles(page), await expectedTitles("lo", 10));
});

test("an answer that is not JSON is reported, not left searching", async () => {
  const page = await browser.newPage();
  await page.goto(worker.url + "/");
  await page.route((url) => url.pathname === "/search",
    (route) => route.fulfill({ status: 502, contentType: "text/html", body: "<h1>Bad gateway</h1>" }));
  await page.fill("#q", "ka");
  await page.click("button[type=submit]");
  await statusStarts(page, "Search failed");
  assert.match(await page.textContent("#status"), /\(502\)/);
});

test("without JavaScript the server renders results and paging links", async () => {
  const context = await browser.newContext({ javaScriptEnabled: false });
  const page = await context.newPage();
  await page.goto(worker.url + "/?q=ka&platform=leaflet");
  assert.deepEqual(await titles(page), await expectedTitles("ka", 0, { platform: "leaflet" }));
  assert.equal(await page.inputValue("#q"), "ka");
  assert.equal(await page.inputValue("#platform"), "leaflet");
  assert.match(await page.textContent("#status"), /Results 1–10/);
  await page.click("#next");
  await page.waitForURL(/offset=10/);
  assert.deepEqual(await titles(page), await expectedTitles("ka", 10, { platform: "leaflet" }));
  assert.equal(await page.isVisible("#prev"), true);
  // The form submits as a plain GET to the same URL shape.
  await page.fill("#q", "lo");
  await page.click("button[type=submit]");
  await page.waitForURL(/q=lo/);
  assert.deepEqual(await titles(page), await expectedTitles("lo", 0, { platform: "leaflet" }));
  assert.ok(await page.$('link[rel=alternate][type="application/atom+xml"]'), "the search offers its feed");
  await context.close();
});

test("the search lives in the URL: links, reload, back and forward", async () => {
  const page = await browser.newPage();
  await page.goto(worker.url + "/");
  await page.fill("#q", "ka");
  await page.selectOption("#platform", "leaflet");
  await page.click("button[type=submit]");
  await page.waitForURL(/\?q=ka&platform=leaflet$/);
  await statusStarts(page, "Results 1–");
  const first = await titles(page);
  await page.click("#next");
  await page.waitForURL(/offset=10/);
  await statusStarts(page, "Results 11");
  const second = await titles(page);

  await page.goBack();
  await statusStarts(page, "Results 1–");
  assert.deepEqual(await titles(page), first);
  await page.goForward();
  await statusStarts(page, "Results 11");
  assert.deepEqual(await titles(page), second);

  await page.reload();
  assert.deepEqual(await titles(page), second, "a reload shows the same page");
  assert.equal(await page.inputValue("#q"), "ka");
  assert.equal(await page.inputValue("#platform"), "leaflet");
});

test("filters, tag chips and author links narrow the search", async () => {
  const page = await browser.newPage();
  await page.goto(worker.url + "/?q=ka");
  // Since: a date far back keeps everything, one in the future leaves nothing.
  await page.fill("#since", "2100-01-01");
  await page.click("button[type=submit]");
  await page.waitForURL(/since=2100-01-01/);
  await statusStarts(page, "Nothing matched");

  await page.waitForSelector("#tags .chip");
  const tag = (await page.textContent("#tags .chip")).slice(1);
  await page.fill("#since", "");
  await page.click("#tags .chip");
  await page.waitForURL(new RegExp(`tag=${encodeURIComponent(tag)}`));
  await statusStarts(page, "Results 1–");
  assert.deepEqual(await titles(page), await expectedTitles("ka", 0, { tag }));

  await page.goto(worker.url + "/?q=ka");
  const did = await page.textContent("#results .author");
  await page.click("#results .author");
  await page.waitForURL(/author=did/);
  await statusStarts(page, "Results 1–");
  const authors = await page.$$eval("#results .author", (links) => links.map((a) => a.textContent));
  assert.ok(authors.length > 0 && authors.every((author) => author === did), authors.join());
  // The author's other posts: all of them, newest first, whatever the query was.
  assert.equal(new URL(page.url()).searchParams.get("q"), null);
  const listed = (await expected({ author: did, offset: 0 })).map((result) => result.title || "(untitled)");
  assert.deepEqual(await titles(page), listed);
  const dates = await page.$$eval("#results time", (times) => times.map((time) => time.dateTime));
  assert.deepEqual(dates, [...dates].sort().reverse(), "newest first");
});

test("search by meaning or both: the mode is a field of the form and of the URL", async () => {
  const page = await browser.newPage();
  await page.goto(worker.url + "/?q=ka%20lo");
  assert.equal(await page.inputValue("#mode"), "", "words by default");
  for (const mode of ["semantic", "hybrid"]) {
    await page.selectOption("#mode", mode);
    await page.click("button[type=submit]");
    await page.waitForURL((url) => url.searchParams.get("mode") === mode);
    await statusStarts(page, "Results 1–");
    assert.deepEqual(await titles(page), await expectedTitles("ka lo", 0, { mode }));
    // Rendered by the server the same, with the mode still chosen.
    await page.reload();
    assert.equal(await page.inputValue("#mode"), mode);
    assert.deepEqual(await titles(page), await expectedTitles("ka lo", 0, { mode }));
  }
  await page.goBack();
  await page.waitForURL((url) => url.searchParams.get("mode") === "semantic");
  assert.equal(await page.inputValue("#mode"), "semantic");
});

test("related posts: a link on each result, in the URL, and back again", async () => {
  const page = await browser.newPage();
  await page.goto(worker.url + "/?q=ka");
  const first = await titles(page);
  const uri = (await expected({ q: "ka", offset: 0 }))[0].uri;
  await page.click("#results .related");
  await page.waitForURL((url) => url.searchParams.get("similar") === uri);
  await statusStarts(page, "Related posts 1–");
  const body = await (await fetch(`${worker.url}/similar?uri=${encodeURIComponent(uri)}&limit=10&format=v2`)).json();
  assert.ok(body.results.length > 0);
  assert.deepEqual(await titles(page), body.results.map((result) => result.title || "(untitled)"));
  assert.ok(body.results.every((result) => result.uri !== uri), "never the post itself");
  await page.reload();
  assert.deepEqual(await titles(page), body.results.map((result) => result.title || "(untitled)"), "rendered by the server too");
  await page.goBack();
  await statusStarts(page, "Results 1–");
  assert.deepEqual(await titles(page), first);
});

test("the keyboard: / focuses search, arrows move through results", async () => {
  const page = await browser.newPage();
  await page.goto(worker.url + "/?q=ka");
  await page.click("h1");
  await page.keyboard.press("/");
  assert.equal(await page.evaluate(() => document.activeElement.id), "q");
  const focused = () => page.evaluate(() => document.activeElement.textContent);
  const all = await titles(page);
  await page.keyboard.press("ArrowDown");
  assert.equal(await focused(), all[0]);
  await page.keyboard.press("ArrowDown");
  assert.equal(await focused(), all[1]);
  await page.keyboard.press("ArrowUp");
  assert.equal(await focused(), all[0]);
});

test("readable in dark mode and on a phone; screenshots", async (t) => {
  mkdirSync(SCREENSHOTS, { recursive: true });
  for (const [name, viewport, colorScheme] of [
    ["desktop-light-1280x900.png", { width: 1280, height: 900 }, "light"],
    ["phone-dark-390x844.png", { width: 390, height: 844 }, "dark"],
  ]) {
    const context = await browser.newContext({ viewport, colorScheme });
    const page = await context.newPage();
    await page.goto(worker.url + "/?q=ka");
    await page.waitForSelector("#tags .chip");
    const colors = await page.evaluate(() => ({
      text: getComputedStyle(document.body).color,
      title: getComputedStyle(document.querySelector(".title")).color,
      scrollWidth: document.documentElement.scrollWidth,
    }));
    if (colorScheme === "dark") {
      // Light text (the canvas is dark) and the dark palette's accent.
      const [r, g, b] = colors.text.match(/\d+/g).map(Number);
      assert.ok(r + g + b > 600, `dark mode text is light: ${colors.text}`);
      assert.equal(colors.title, "rgb(143, 212, 174)");
    }
    assert.ok(colors.scrollWidth <= viewport.width, `no sideways scrolling at ${viewport.width}px: ${colors.scrollWidth}`);
    const path = join(SCREENSHOTS, name);
    await page.screenshot({ path, fullPage: true });
    t.diagnostic(`screenshot: ${path}`);
    await context.close();
  }
});
