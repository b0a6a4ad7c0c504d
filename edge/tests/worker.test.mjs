// The edge Worker, built by worker-build, serving real published snapshots in workerd.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { publishSnapshots, objectsUnder, nativeSearch, startWorker } from "./support.mjs";

let worker;
let snapshots;

const get = (path, init) => fetch(worker.url + path, init);

before(async () => {
  snapshots = publishSnapshots(3000, 2);
  worker = await startWorker();
});

after(async () => {
  await worker?.mf.dispose();
});

async function seed(objects) {
  for (const [key, bytes] of objects) await worker.bucket.put(key, Uint8Array.from(bytes));
}

async function pointTo(manifest) {
  await worker.bucket.put("channels/prod/latest.json", JSON.stringify(manifest));
}

test("before any snapshot: health answers, search is a 503 with Retry-After, never an empty result", async () => {
  const health = await get("/health");
  assert.equal(health.status, 200);
  const body = await health.json();
  assert.equal(body.snapshot, null);
  assert.ok(body.oldest_schema_version >= 1 && body.oldest_schema_version < body.schema_version, JSON.stringify(body));
  const search = await get("/search?q=garden");
  assert.equal(search.status, 503);
  assert.equal(search.headers.get("retry-after"), "5");
  assert.match((await search.json()).error, /nothing has been published/);
  // The failure stands for a while: a burst does not make every request try R2 again.
  const burst = await Promise.all(Array.from({ length: 5 }, () => get("/search?q=garden")));
  assert.deepEqual(burst.map((r) => r.status), Array(5).fill(503));
  assert.equal((await (await get("/stats")).json()).snapshot.failures, 1);
  // Let it lapse (RETRY_EMPTY_MS), so the next test's first request loads.
  await new Promise((resolve) => setTimeout(resolve, 2100));
});

test("bad parameters are a JSON 400 even before a snapshot loads", async () => {
  for (const path of ["/search", "/search?q=%20%20", "/search?q=x&limit=-1", "/search?q=x&limit=1000",
                      "/search?q=x&offset=5000", "/search?q=x&since=yesterday", "/search?q=x&platform=myspace",
                      "/search?q=x&author=bob", "/search?q=" + "a".repeat(300),
                      "/search?q=" + encodeURIComponent(`"${"qui ".repeat(40)}"`), "/document", "/tags?limit=0"]) {
    const response = await get(path);
    assert.equal(response.status, 400, path);
    assert.equal(typeof (await response.json()).error, "string", path);
  }
  assert.equal((await get("/search?q=x", { method: "POST" })).status, 405);
  assert.equal((await get("/nope")).status, 404);
});

test("serves the published build with every endpoint", async () => {
  const [first, second] = snapshots.manifests;
  // Upload both builds, point at the first.
  await seed(objectsUnder(snapshots.published).filter(([key]) => key.startsWith("builds/")));
  await pointTo(first);

  // Concurrent first requests share one load.
  const burst = await Promise.all(Array.from({ length: 8 }, () => get("/search?q=lo")));
  assert.deepEqual(burst.map((r) => r.status), Array(8).fill(200));
  assert.equal((await (await get("/stats")).json()).snapshot.loads, 1, "one load per isolate");

  const search = await get("/search?q=ka&format=v2&limit=5");
  assert.equal(search.status, 200);
  assert.equal(search.headers.get("access-control-allow-origin"), "*");
  assert.match(search.headers.get("cache-control"), /max-age/);
  const body = await search.json();
  assert.equal(body.results.length, 5);
  assert.equal(body.total, null);
  assert.equal(body.hasMore, true);
  assert.equal(body.nextOffset, 5);

  const snapshot = await (await get("/snapshot")).json();
  assert.equal(snapshot.manifest.build_id, first.build_id);

  const uris = body.results.slice(0, 2).map((r) => r.uri);
  const missing = "at://did:plc:nobody/site.standard.document/none";
  const doc = await (await get(`/document?uri=${encodeURIComponent(uris[1])}&uri=${encodeURIComponent(missing)}&uri=${encodeURIComponent(uris[0])}`)).json();
  assert.deepEqual(doc.documents.map((d) => d.uri), [uris[1], uris[0]]);
  assert.deepEqual(doc.missing, [missing]);
  const repeated = await get(`/document?uri=${Array(26).fill(encodeURIComponent(uris[0])).join(",")}`);
  assert.equal(repeated.status, 200, "a repeated uri is asked for once");
  assert.deepEqual((await repeated.json()).documents.map((d) => d.uri), [uris[0]]);

  const tags = await (await get("/tags?limit=3")).json();
  assert.equal(tags.tags.length, 3);
  assert.ok(tags.tags[0].documents >= tags.tags[2].documents);

  const stats = await (await get("/stats")).json();
  assert.equal(stats.snapshot.build_id, first.build_id);
  assert.equal(stats.counts.documents, first.counts.documents);
  assert.ok(stats.requests.search.requests >= 1);
  assert.ok(stats.snapshot.download_ms >= 0 && stats.snapshot.load_ms >= stats.snapshot.download_ms, JSON.stringify(stats.snapshot));

  const hostile = await get("/search?q=" + encodeURIComponent('NEAR(ka lo) title:x "unbalanced ^*'));
  assert.equal(hostile.status, 200);

  const page = await get("/");
  assert.match(page.headers.get("content-type"), /text\/html/);
  assert.match(await page.text(), /<form id="search"/);
  assert.ok(second.build_id > first.build_id);
});

test("answers match the native search core exactly", async () => {
  const live = (await (await get("/snapshot")).json()).manifest;
  const file = join(snapshots.published, live.artifact);
  const cases = [
    { q: "ka lo" }, { q: "mi", format: "v2", limit: "7", offset: "7" }, { q: "ra", platform: "leaflet" },
    { q: "ten su vo", type: "article" }, { q: "ne", since: "2025-06-01" }, { q: "\"ka lo\"" }, { q: "shi da pe" },
  ];
  for (const params of cases) {
    const worker = await (await get("/search?" + new URLSearchParams(params))).json();
    assert.deepEqual(worker, nativeSearch(file, params), JSON.stringify(params));
  }
});

test("a corrupted build is refused and the live one keeps serving; a good one is adopted", async () => {
  const [first, second] = snapshots.manifests;
  await pointTo(first);
  assert.equal((await (await get("/snapshot")).json()).manifest.build_id, first.build_id);

  const artifact = objectsUnder(snapshots.published).find(([key]) => key === second.artifact)[1];
  const corrupted = Buffer.from(artifact);
  corrupted[Math.floor(corrupted.length / 2)] ^= 0xff;
  const bad = { ...second, build_id: "corrupted-build", artifact: "builds/corrupted-build/snapshot.db" };
  await worker.bucket.put(bad.artifact, Uint8Array.from(corrupted));
  await pointTo(bad);

  const search = await get("/search?q=ka");
  assert.equal(search.status, 200, "the old build still answers");
  const stats = await (await get("/stats")).json();
  assert.equal(stats.snapshot.build_id, first.build_id);
  assert.match(stats.snapshot.last_failure, /sha256/);

  const truncated = { ...second, build_id: "truncated-build", artifact: "builds/truncated-build/snapshot.db" };
  await worker.bucket.put(truncated.artifact, Uint8Array.from(artifact.subarray(0, artifact.length - 4096)));
  await pointTo(truncated);
  assert.equal((await get("/search?q=ka")).status, 200, "the old build still answers");
  const afterTruncated = await (await get("/stats")).json();
  assert.equal(afterTruncated.snapshot.build_id, first.build_id);
  assert.match(afterTruncated.snapshot.last_failure, /bytes, manifest says/);

  await pointTo(second);
  assert.equal((await (await get("/snapshot")).json()).manifest.build_id, second.build_id);
});
