// Self-hosting parity: `native-worker serve` over a published directory and the Worker in
// workerd over the same objects in R2 answer every API request alike: status, body (links carry
// each server's own origin), content type, caching and CORS headers.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { publishSnapshots, objectsUnder, startWorker, ROOT } from "./support.mjs";

let worker;
let native;
let nativeUrl;

/** Starts `native-worker serve` on a loopback port; resolves with its URL once it listens. */
function startNative(published) {
  const child = spawn(join(ROOT, "target", "debug", "native-worker"),
    ["serve", "--snapshot-dir", published, "--serve-addr", "127.0.0.1:0", "--data-dir", published],
    { env: { ...process.env, RUST_LOG: "info", NO_COLOR: "1" }, stdio: ["ignore", "ignore", "pipe"] });
  return new Promise((resolve, reject) => {
    let log = "";
    const timer = setTimeout(() => reject(new Error(`serve did not listen:\n${log}`)), 30_000);
    child.stderr.on("data", (data) => {
      log += data;
      const match = log.match(/search server listening url=(http:\/\/[0-9.:]+)\//);
      if (match) {
        clearTimeout(timer);
        resolve({ child, url: match[1] });
      }
    });
    child.once("exit", (code) => reject(new Error(`serve exited with ${code}:\n${log}`)));
  });
}

before(async () => {
  const snapshots = publishSnapshots(1500, 1);
  worker = await startWorker();
  for (const [key, bytes] of objectsUnder(snapshots.published)) await worker.bucket.put(key, Uint8Array.from(bytes));
  ({ child: native, url: nativeUrl } = await startNative(snapshots.published));
  // Both have loaded the build before anything is compared.
  for (const base of [worker.url, nativeUrl]) {
    for (let i = 0; i < 100; i++) {
      if ((await fetch(`${base}/search?q=ka`)).status === 200) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
});

after(async () => {
  native?.kill();
  await worker?.mf.dispose();
});

const HEADERS = ["content-type", "cache-control", "access-control-allow-origin",
  "access-control-allow-methods", "access-control-max-age", "retry-after", "allow"];

async function answer(base, path, method = "GET") {
  const response = await fetch(base + path, { method });
  const body = (await response.text()).replaceAll(base, "ORIGIN");
  const headers = Object.fromEntries(HEADERS.map((name) => [name, response.headers.get(name)]));
  return { status: response.status, headers, body };
}

test("the native server answers every API request as the Worker does", async () => {
  const first = await (await fetch(`${worker.url}/search?q=ka&limit=1`)).json();
  const uri = encodeURIComponent(first[0].uri);
  const requests = [
    ["/search?q=ka"],
    ["/search?q=ka&format=v2&limit=5&offset=5"],
    ["/search?q=lo%20ka&platform=leaflet&format=v2"],
    ["/search?q=%22ka%22&type=article"],
    [`/document?uri=${uri}&uri=at://did:plc:nobody/x/y`],
    ["/tags?limit=5"],
    [`/search?author=${encodeURIComponent(first[0].did)}&format=v2`],
    [`/feed?author=${encodeURIComponent(first[0].did)}`],
    [`/?author=${encodeURIComponent(first[0].did)}`],
    ["/feed?q=ka"],
    ["/feed?q=lo&platform=whitewind"],
    [`/similar?uri=${uri}`],
    [`/similar?uri=${uri}&format=v2&limit=3&offset=3&type=article`],
    ["/similar?uri=at://did:plc:nobody/x/y"],
    ["/search?q=ka%20lo&mode=semantic"],
    ["/search?q=ka%20lo&mode=semantic&platform=leaflet&format=v2&limit=5&offset=5"],
    ["/search?q=ka&mode=hybrid&format=v2"],
    ["/search?q=ka&mode=vector"],
    [`/similar?uri=${uri}&mode=semantic`],
    [`/similar?uri=${uri}&mode=hybrid&limit=5`],
    ["/similar"],
    [`/?similar=${uri}`],
    ["/opensearch.xml"],
    ["/"],
    ["/?q=ka"],
    ["/?q=ka&offset=10&platform=leaflet"],
    ["/?q=%2A%2A%2A"],
    ["/search"],
    ["/search?q=a&limit=999"],
    ["/search?q=%2A%2A%2A%20()"],
    ["/tags?limit=0"],
    ["/document"],
    ["/nope"],
    ["/search?q=ka", "POST"],
    ["/search?q=ka", "OPTIONS"],
  ];
  const answered = new Map();
  for (const [path, method] of requests) {
    const [edge, self] = await Promise.all([answer(worker.url, path, method), answer(nativeUrl, path, method)]);
    answered.set(path, edge);
    assert.equal(self.status, edge.status, `${method ?? "GET"} ${path}: status`);
    assert.deepEqual(self.headers, edge.headers, `${method ?? "GET"} ${path}: headers`);
    if (edge.headers["content-type"]?.startsWith("application/json")) {
      assert.deepEqual(JSON.parse(self.body), JSON.parse(edge.body), `${path}: body`);
    } else {
      assert.equal(self.body, edge.body, `${method ?? "GET"} ${path}: body`);
    }
  }
  // The build carries vectors, so the semantic answers compared above are results, not refusals.
  for (const path of ["/search?q=ka%20lo&mode=semantic", "/search?q=ka&mode=hybrid&format=v2", `/similar?uri=${uri}&mode=semantic`]) {
    const { status, body } = answered.get(path);
    assert.equal(status, 200, `${path}: ${body}`);
    const results = JSON.parse(body);
    assert.ok((results.results ?? results).length > 0, `${path}: no results`);
  }
  assert.equal(answered.get("/search?q=ka&mode=vector").status, 400);
});
