// The Worker under load in workerd: 200 concurrent clients for 60 s (LOAD_SECONDS overrides)
// searching, looking up, listing tags and sending hostile queries against a paged build. Zero
// 5xx, every sampled answer identical to the native search core's, wasm memory flat.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { publishSnapshots, objectsUnder, nativeSearch, startWorker } from "./support.mjs";

const CLIENTS = 200;
const SECONDS = Number(process.env.LOAD_SECONDS ?? 60);
/** The chunk cache budget, in MB, and what a paged Worker needs beyond it (see paged.test.mjs). */
const BUDGET_MB = 8;
const OVERHEAD_MB = 16;

const SYLLABLES = ["ka", "lo", "mi", "ra", "ten", "su", "vo", "ne", "shi", "da", "pe", "lu", "gor", "an", "el"];

let worker;
after(async () => {
  if (worker) await worker.mf.dispose();
});

test(`${CLIENTS} clients for ${SECONDS} s: no 5xx, answers exact, memory flat`, { timeout: (SECONDS + 240) * 1000 }, async () => {
  const snapshots = publishSnapshots(4000, 1);
  const [manifest] = snapshots.manifests;
  const file = join(snapshots.published, manifest.artifact);
  worker = await startWorker({ RESIDENT_MAX_MB: "0", PAGE_CACHE_MB: String(BUDGET_MB) });
  for (const [key, bytes] of objectsUnder(snapshots.published)) {
    if (key.startsWith("builds/")) await worker.bucket.put(key, Uint8Array.from(bytes));
  }
  await worker.bucket.put("channels/prod/latest.json", JSON.stringify(manifest));

  // The sampled queries and what native answers for each.
  const searches = [];
  for (let i = 0; i < 24; i++) {
    const q = i % 3 === 0 ? `${SYLLABLES[i % 15]} ${SYLLABLES[(i * 7 + 2) % 15]}` : SYLLABLES[i % 15];
    searches.push({ q, limit: String(10 + (i % 3) * 10), offset: String((i % 4) * 10) });
  }
  const expected = searches.map((params) => JSON.stringify(nativeSearch(file, params)));
  const probe = await (await fetch(worker.url + "/search?q=ka&limit=20")).json();
  const uris = probe.filter((result) => result.type !== "publication").slice(0, 5).map((result) => result.uri);
  const hostile = ["/search?q=" + "(".repeat(400), "/search?q=ka&limit=-5", "/search?q=" + "x".repeat(5000),
    "/document?" + Array.from({ length: 500 }, (_, i) => `uri=at://x/${i}`).join("&"), "/search?q=ka&offset=abc"];

  const outcome = { requests: 0, byStatus: {}, mismatches: [], latencies: [] };
  const memory = [];
  const stop = Date.now() + SECONDS * 1000;
  const sampler = (async () => {
    while (Date.now() < stop) {
      const stats = await (await fetch(worker.url + "/stats")).json();
      memory.push(stats.wasm_memory_bytes);
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  })();
  async function client(id) {
    for (let n = 0; Date.now() < stop; n++) {
      const pick = (id * 31 + n) % 40;
      let path;
      let expect;
      if (pick < 30) {
        const index = (id + n) % searches.length;
        path = "/search?" + new URLSearchParams(searches[index]);
        expect = n % 10 === 0 ? expected[index] : undefined; // every tenth answer checked whole
      } else if (pick < 34) {
        path = "/document?" + uris.map((uri) => "uri=" + encodeURIComponent(uri)).join("&");
      } else if (pick < 36) {
        path = "/tags?limit=20";
      } else {
        path = hostile[(id + n) % hostile.length];
      }
      const started = performance.now();
      const response = await fetch(worker.url + path);
      const body = await response.text();
      outcome.latencies.push(performance.now() - started);
      outcome.requests++;
      outcome.byStatus[response.status] = (outcome.byStatus[response.status] ?? 0) + 1;
      if (response.status >= 500) outcome.mismatches.push(`${response.status} on ${path.slice(0, 80)}: ${body.slice(0, 200)}`);
      if (pick >= 36 && response.status !== 400) outcome.mismatches.push(`hostile ${path.slice(0, 60)} got ${response.status}`);
      if (expect !== undefined && JSON.stringify(JSON.parse(body)) !== expect) {
        outcome.mismatches.push(`answer differs from native for ${path}`);
      }
    }
  }
  await Promise.all([...Array.from({ length: CLIENTS }, (_, id) => client(id)), sampler]);

  const sorted = outcome.latencies.sort((a, b) => a - b);
  const at = (p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))].toFixed(1);
  const mb = memory.map((bytes) => bytes / 1e6);
  const half = Math.floor(mb.length / 2);
  const firstHalf = Math.max(...mb.slice(0, half));
  const secondHalf = Math.max(...mb.slice(half));
  console.log(`# load: ${CLIENTS} clients, ${SECONDS} s, ${outcome.requests} requests ` +
    `(${(outcome.requests / SECONDS).toFixed(0)}/s), statuses ${JSON.stringify(outcome.byStatus)}, ` +
    `latency ms p50 ${at(0.5)} p99 ${at(0.99)} max ${at(1)}, wasm memory MB ${mb.map((m) => m.toFixed(1)).join(" ")}`);
  assert.deepEqual(outcome.mismatches.slice(0, 10), []);
  assert.ok(outcome.requests >= CLIENTS * 2, `only ${outcome.requests} requests`);
  assert.ok(mb.length >= 4, "memory was sampled through the run");
  assert.ok(secondHalf <= firstHalf + 2, `memory grew: ${firstHalf.toFixed(1)} MB then ${secondHalf.toFixed(1)} MB`);
  assert.ok(Math.max(...mb) <= BUDGET_MB + OVERHEAD_MB, `wasm memory ${Math.max(...mb).toFixed(1)} MB`);
});
