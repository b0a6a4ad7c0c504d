// Paged edge benchmark: prints a table. Run by hand (not in CI):
//   cargo build --release -p pubsearch-native-worker && worker-build --release --no-opt edge
//   node edge/bench/paged.mjs [corpus records, default 9000,40000]
//
// For each corpus size it publishes a real snapshot with the native pipeline and serves it from a
// Worker in workerd (Miniflare, local R2) that pages every build (RESIDENT_MAX_MB=0) with the
// default 32 MB chunk cache and no Cache API, so every chunk a query needs comes from R2. Each
// query runs first in a fresh isolate that has only opened the build (its cold cost: chunks and
// bytes from R2, dependent round trips, time), then 20 more times in the same isolate (warm p50).
// The last column is the isolate's wasm memory after the query's runs. Multiply round
// trips by R2's latency from a colo (about 20 ms) to estimate a cold query's wait on R2.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const NATIVE = join(ROOT, "target", "release", "native-worker");
const sizes = (process.argv[2] || "9000,40000").split(",").map(Number);
const WARM_RUNS = 20;

const run = (args) => execFileSync(NATIVE, args, { env: { ...process.env, RUST_LOG: "warn" }, maxBuffer: 1 << 30 });
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

/** Query classes: label and query string (the author and tag are filled in from the corpus). */
function queries(author, tag) {
  return [
    ["common word", "q=ka"],
    ["common word, 2nd word", "q=vo"],
    ["2-word OR", "q=gor%20an"],
    ["3-word OR", "q=ra%20ten%20su"],
    ["phrase", "q=%22ka%20lo%22"],
    ["prefix while typing", "q=ne%20shi"],
    ["prefix, 4 chars", "q=kalo"],
    ["platform filter", "q=ka&platform=leaflet"],
    ["since filter", "q=ka&since=2025-06-01"],
    ["tag filter", `q=ka&tag=${encodeURIComponent(tag)}`],
    ["author filter", `q=ka&author=${encodeURIComponent(author)}`],
    ["deep offset", "q=ka&offset=400&limit=40"],
  ];
}

function files(dir, prefix = "") {
  return readdirSync(join(dir, prefix), { withFileTypes: true }).flatMap((entry) => {
    const key = prefix ? `${prefix}/${entry.name}` : entry.name;
    return entry.isDirectory() ? files(dir, key) : [[key, join(dir, key)]];
  });
}

/** A fresh isolate over the persisted local R2 `r2Dir`, paging every build, no Cache API. */
async function startWorker(r2Dir) {
  const mf = new Miniflare({
    modules: true, scriptPath: join(ROOT, "edge", "build", "index.js"),
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
    compatibilityDate: "2026-04-01", r2Buckets: ["SNAPSHOTS"], r2Persist: r2Dir, cache: false,
    bindings: { SNAPSHOT_CHANNEL: "prod", POINTER_CHECK_SECONDS: "3600", RESIDENT_MAX_MB: "0" },
    host: "127.0.0.1", port: 0,
  });
  const base = (await mf.ready).toString().replace(/\/$/, "");
  return { mf, base, bucket: await mf.getR2Bucket("SNAPSHOTS") };
}

async function get(url) {
  const started = performance.now();
  const response = await fetch(url);
  const body = await response.text();
  if (!response.ok) throw new Error(`${url}: ${response.status} ${body}`);
  return { ms: performance.now() - started, body };
}

const searchReads = async (base) => JSON.parse((await get(`${base}/stats`)).body).requests.search?.paged;

console.log("| documents | snapshot MB | query | cold R2 chunks | cold R2 MB | cold round trips | cold ms | warm p50 ms | wasm memory MB |");
console.log("|---|---|---|---|---|---|---|---|---|");
for (const size of sizes) {
  const dir = mkdtempSync(join(tmpdir(), "pubsearch-paged-bench-"));
  const corpus = join(dir, "corpus.ndjson");
  run(["gen-corpus", "--records", String(size), "--seed", "3", "--out", corpus]);
  run(["run", "--replay", corpus, "--data-dir", dir, "--admin-addr", "off", "--publish-minutes", "0"]);
  const manifest = JSON.parse(run(["publish", "--data-dir", dir, "--snapshot-dir", join(dir, "pub"), "--force"]).toString());
  const r2Dir = join(dir, "r2");
  {
    const { mf, bucket } = await startWorker(r2Dir);
    for (const [key, path] of files(join(dir, "pub"))) await bucket.put(key, Uint8Array.from(readFileSync(path)));
    await mf.dispose();
  }
  // The author and tag filters use the corpus's own: the most used tag, the top result's author.
  let author, tag;
  {
    const { mf, base } = await startWorker(r2Dir);
    tag = JSON.parse((await get(`${base}/tags?limit=1`)).body).tags[0].tag;
    author = JSON.parse((await get(`${base}/search?q=ka`)).body)[0].did;
    await mf.dispose();
  }
  for (const [label, query] of queries(author, tag)) {
    const { mf, base } = await startWorker(r2Dir);
    await get(`${base}/health`);
    const before = (await searchReads(base)) || { r2_chunks: 0, r2_bytes: 0, round_trips: 0 };
    const cold = await get(`${base}/search?${query}`);
    const after = await searchReads(base);
    const warm = [];
    for (let i = 0; i < WARM_RUNS; i++) warm.push((await get(`${base}/search?${query}`)).ms);
    const stats = JSON.parse((await get(`${base}/stats`)).body);
    await mf.dispose();
    console.log(`| ${manifest.counts.documents} | ${(manifest.byte_size / 1e6).toFixed(1)} | ${label} | ` +
      `${after.r2_chunks - before.r2_chunks} | ${((after.r2_bytes - before.r2_bytes) / 1e6).toFixed(2)} | ` +
      `${after.round_trips - before.round_trips} | ${cold.ms.toFixed(0)} | ${median(warm).toFixed(2)} | ` +
      `${(stats.wasm_memory_bytes / 1e6).toFixed(1)} |`);
  }
  rmSync(dir, { recursive: true, force: true });
}
