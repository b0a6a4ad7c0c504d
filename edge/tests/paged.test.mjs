// Paged builds in workerd: a snapshot several times the chunk cache's budget, read by range from
// the local R2 bucket through the JSPI VFS, answering exactly as the native search core does.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { join } from "node:path";
import { publishSnapshots, objectsUnder, nativeSearch, startWorker } from "./support.mjs";

/** The chunk cache budget the tests give the Worker, in MB. */
const BUDGET_MB = 8;
/**
 * Wasm memory a paged Worker needs beyond its chunk cache, whatever the corpus: the row facts'
 * block cache (at most about 6 MB), SQLite's page cache (1 MB), a query's scan (at most 10,000
 * matches a phrase), the Rust heap and stack, and the allocator's slack.
 */
const OVERHEAD_MB = 16;

let snapshots;
const workers = [];

before(async () => {
  // 9,000 records make about 6.8k documents, a snapshot of over 40 MB: five times the budget.
  snapshots = publishSnapshots(9000, 2);
});

after(async () => {
  for (const worker of workers) await worker.mf.dispose();
});

/** A Worker that pages every build, with an 8 MB chunk cache, seeded with both builds. */
async function pagedWorker(bindings = {}, options = {}) {
  const worker = await startWorker({ RESIDENT_MAX_MB: "0", PAGE_CACHE_MB: String(BUDGET_MB), ...bindings }, options);
  workers.push(worker);
  for (const [key, bytes] of objectsUnder(snapshots.published)) {
    if (key.startsWith("builds/")) await worker.bucket.put(key, Uint8Array.from(bytes));
  }
  worker.get = (path) => fetch(worker.url + path);
  worker.json = async (path) => (await worker.get(path)).json();
  worker.pointTo = (manifest) => worker.bucket.put("channels/prod/latest.json", JSON.stringify(manifest));
  return worker;
}

const SYLLABLES = ["ka", "lo", "mi", "ra", "ten", "su", "vo", "ne", "shi", "da", "pe", "lu", "gor", "an", "el",
  "is", "or", "um", "tra", "bel", "qui", "zo", "mar", "fen", "dra", "ol", "ki", "sta", "ver", "nu"];

/** At least 100 searches of every class the issue names, built from the corpus's syllables. */
function queryCases(author, tag) {
  const s = (i) => SYLLABLES[i % SYLLABLES.length];
  const cases = [];
  for (let i = 0; i < 12; i++) cases.push({ q: s(i) }); // common words
  for (let i = 0; i < 12; i++) cases.push({ q: s(i) + s(i + 7) + s(i + 3) }); // rare words
  for (let i = 0; i < 12; i++) cases.push({ q: `${s(i)} ${s(i + 5)} ${s(i + 11)}` }); // 2–3 word OR
  for (let i = 0; i < 10; i++) cases.push({ q: `"${s(i)} ${s(i + 1)}"` }); // phrases
  for (let i = 0; i < 12; i++) cases.push({ q: `${s(i + 2)} ${s(i)}${s(i + 9)}`.slice(0, 8 + (i % 3)) }); // typing
  for (let i = 0; i < 8; i++) cases.push({ q: s(i), platform: ["leaflet", "pckt", "offprint", "greengale"][i % 4] });
  for (let i = 0; i < 8; i++) cases.push({ q: `${s(i)} ${s(i + 4)}`, tag });
  for (let i = 0; i < 8; i++) cases.push({ q: s(i + 3), author });
  for (let i = 0; i < 8; i++) cases.push({ q: s(i + 6), since: "2025-10-20" });
  for (let i = 0; i < 8; i++) cases.push({ q: s(i), type: ["article", "looseleaf", "publication", "article,publication"][i % 4] });
  for (let i = 0; i < 8; i++) cases.push({ q: s(i), format: "v2", limit: "40", offset: String([200, 600, 960, 1000][i % 4]) });
  // By meaning (the build carries the model: support.mjs points the publisher at it).
  for (let i = 0; i < 8; i++) cases.push({ q: `${s(i)} ${s(i + 3)}`, mode: "semantic", ...(i % 2 ? { platform: "leaflet" } : {}) });
  for (let i = 0; i < 8; i++) cases.push({ q: `${s(i)} ${s(i + 6)}`, mode: "hybrid", ...(i % 3 === 0 ? { author } : {}) });
  return cases;
}

test("a paged build several times the cache budget answers every class exactly as native", async () => {
  const worker = await pagedWorker();
  const [first] = snapshots.manifests;
  const file = join(snapshots.published, first.artifact);
  assert.ok(statSync(file).size >= 4 * BUDGET_MB * 1e6, `the snapshot (${statSync(file).size} bytes) is at least 4x the budget`);
  await worker.pointTo(first);

  const health = await worker.json("/health");
  assert.equal(health.jspi, true, "workerd has JSPI");
  const probe = await worker.json("/search?q=ka&limit=40");
  assert.equal(probe.length, 40);
  assert.equal((await worker.json("/health")).paged, true);
  const author = probe[7].did;
  const tag = (await worker.json("/tags?limit=5")).tags[2].tag;

  const cases = queryCases(author, tag);
  assert.ok(cases.length >= 100, `${cases.length} cases`);
  for (const params of cases) {
    const response = await worker.get("/search?" + new URLSearchParams(params));
    assert.equal(response.status, 200, JSON.stringify(params));
    assert.deepEqual(await response.json(), nativeSearch(file, params), JSON.stringify(params));
  }

  // Lookups and tags read through the same VFS.
  const uris = probe.filter((result) => result.type !== "publication").slice(0, 5).map((result) => result.uri);
  assert.equal(uris.length, 5);
  const looked = await worker.json("/document?" + uris.map((uri) => "uri=" + encodeURIComponent(uri)).join("&"));
  assert.deepEqual(looked.documents.map((doc) => doc.uri), uris);
  assert.ok(looked.documents.every((doc) => doc.snippet.length > 0));

  const stats = await worker.json("/stats");
  const paged = stats.paged.overall;
  assert.ok(paged.r2_chunks > 0, JSON.stringify(paged));
  assert.ok(paged.round_trips_max >= 1, JSON.stringify(paged));
  assert.ok(stats.requests.search.paged.queries >= cases.length, JSON.stringify(stats.requests.search));
  assert.ok(stats.paged.chunk_cache_held_bytes <= BUDGET_MB * 1e6, JSON.stringify(stats.paged));
  const memoryMb = stats.wasm_memory_bytes / 1e6;
  console.log(`# paged: ${(statSync(file).size / 1e6).toFixed(1)} MB snapshot, ${memoryMb.toFixed(1)} MB wasm memory, ` +
    `${paged.r2_chunks} chunks from R2, ${paged.cache_api_chunks} from the Cache API, hit ratio ${paged.hit_ratio.toFixed(3)}, ` +
    `round trips per query p50 ${paged.round_trips_p50} p95 ${paged.round_trips_p95} max ${paged.round_trips_max}`);
  assert.ok(memoryMb <= BUDGET_MB + OVERHEAD_MB, `wasm memory ${memoryMb.toFixed(1)} MB`);
});

test("16 concurrent queries whose reads suspend all answer correctly", async () => {
  const worker = await pagedWorker();
  const [first] = snapshots.manifests;
  await worker.pointTo(first);
  assert.equal((await worker.get("/search?q=ka")).status, 200);
  const file = join(snapshots.published, first.artifact);
  const cases = Array.from({ length: 16 }, (_, i) => ({
    q: `${SYLLABLES[(i * 7) % 30]}${SYLLABLES[(i * 11 + 3) % 30]} ${SYLLABLES[(i * 5 + 1) % 30]}`,
    limit: "10",
  }));
  const before = (await worker.json("/stats")).requests.search.paged;
  const answers = await Promise.all(cases.map(async (params) => {
    const response = await worker.get("/search?" + new URLSearchParams(params));
    return [response.status, await response.json()];
  }));
  for (const [i, [status, body]] of answers.entries()) {
    assert.equal(status, 200, JSON.stringify(body));
    assert.deepEqual(body, nativeSearch(file, cases[i]), JSON.stringify(cases[i]));
  }
  const after = (await worker.json("/stats")).requests.search.paged;
  assert.ok(after.round_trips - before.round_trips >= 16, "the queries had to fetch, so their jobs suspended");
});

test("R2 failing mid-query answers 503 with Retry-After, and the next query succeeds", async () => {
  // No Cache API: every chunk this worker has not cached in memory comes from R2.
  const worker = await pagedWorker({ PAGE_CACHE_MB: "1" }, { cache: false });
  const [first] = snapshots.manifests;
  await worker.pointTo(first);
  assert.equal((await worker.get("/search?q=ka")).status, 200);
  const artifact = objectsUnder(snapshots.published).find(([key]) => key === first.artifact)[1];
  await worker.bucket.delete(first.artifact);
  const query = "/search?q=" + encodeURIComponent("gor mar fen") + "&offset=40";
  const failed = await worker.get(query);
  assert.equal(failed.status, 503);
  assert.equal(failed.headers.get("retry-after"), "5");
  assert.match((await failed.json()).error, new RegExp(`build ${first.build_id}`));
  assert.ok((await worker.json("/stats")).paged.overall.failed_fetches >= 1);

  await worker.bucket.put(first.artifact, Uint8Array.from(artifact));
  const recovered = await worker.get(query);
  assert.equal(recovered.status, 200);
  assert.deepEqual(await recovered.json(), nativeSearch(join(snapshots.published, first.artifact), {
    q: "gor mar fen", offset: "40",
  }));
});

test("a chunk that fails its digest is refused: 503 naming the build, then the previous build serves", async () => {
  const worker = await pagedWorker({ PAGE_CACHE_MB: "1" }, { cache: false });
  const [first, second] = snapshots.manifests;
  await worker.pointTo(first);
  assert.equal((await worker.get("/search?q=ka")).status, 200);
  await worker.pointTo(second);
  assert.equal((await worker.get("/search?q=lo")).status, 200);
  assert.equal((await worker.json("/snapshot")).manifest.build_id, second.build_id);

  // Every chunk after the first changes in R2 after adoption: the next read that misses the
  // chunk cache fetches a chunk that does not match the build's chunk table.
  const artifact = Buffer.from(objectsUnder(snapshots.published).find(([key]) => key === second.artifact)[1]);
  const chunk = second.chunks?.chunk_bytes ?? 65536;
  for (let offset = chunk + 100; offset < artifact.length; offset += chunk) artifact[offset] ^= 0xff;
  await worker.bucket.put(second.artifact, Uint8Array.from(artifact));

  const refused = await worker.get("/search?q=" + encodeURIComponent("shi da pe vo") + "&offset=100");
  assert.equal(refused.status, 503);
  assert.match((await refused.json()).error, new RegExp(`chunk \\d+ of build ${second.build_id}`));

  const fallback = await worker.get("/search?q=ka");
  assert.equal(fallback.status, 200);
  const stats = await worker.json("/stats");
  assert.equal(stats.snapshot.build_id, first.build_id, "the previous build serves again");
  assert.deepEqual(stats.snapshot.bad_builds, [second.build_id]);
  assert.ok(stats.paged.overall.corrupt_chunks >= 1);
  // The pointer still names the bad build; it is not adopted again.
  assert.equal((await worker.get("/search?q=lo")).status, 200);
  assert.equal((await worker.json("/snapshot")).manifest.build_id, first.build_id);
});

test("a build whose first chunk fails its digest is refused at open and counted once", async () => {
  const worker = await pagedWorker({ PAGE_CACHE_MB: "1" }, { cache: false });
  const [first] = snapshots.manifests;
  const artifact = Buffer.from(objectsUnder(snapshots.published).find(([key]) => key === first.artifact)[1]);
  // Inside the first page, which opening reads before anything else.
  artifact[100] ^= 0xff;
  await worker.bucket.put(first.artifact, Uint8Array.from(artifact));
  await worker.pointTo(first);

  const refused = await worker.get("/search?q=ka");
  assert.equal(refused.status, 503);
  const stats = await worker.json("/stats");
  assert.deepEqual(stats.snapshot.bad_builds, [first.build_id]);
  assert.equal(stats.snapshot.failures, 1, "one corrupt build, one failure");
  assert.match(stats.snapshot.last_failure, new RegExp(`chunk 0 of build ${first.build_id}`));
});
