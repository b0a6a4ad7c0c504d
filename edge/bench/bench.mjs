// Edge benchmark: prints a table. Run by hand (not in CI):
//   cargo build --release -p pubsearch-native-worker && worker-build --release --no-opt edge
//   node edge/bench/bench.mjs [corpus records, default 1000,10000,19000]
//
// 19,000 records make about 14.5k documents (an 87 MB snapshot, 91 MB of wasm memory); 20,500 make
// 15.8k, 103 MB. So about 15k documents is the most that stays under 100 MB with snapshot schema 3
// (schema 2: 10.3k). A 128 MB isolate cannot hold much more.
//
// For each corpus size it publishes a real snapshot with the native pipeline, starts the built
// Worker in workerd (Miniflare, local R2), and measures cold start to first answer (median of three
// fresh isolates), warm /search latency, the Worker's wasm memory, and the native search core's
// time on the same snapshot (each query asked of the Worker and then of a native process in turn,
// after a warm-up).
import { execFileSync, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const NATIVE = join(ROOT, "target", "release", "native-worker");
const QUERIES = ["ka", "mi lo", "ra ten su", "\"ka lo\"", "vo", "ne shi", "da pe lu", "gor an"];
const sizes = (process.argv[2] || "1000,10000,19000").split(",").map(Number);
// Rounds of all QUERIES: discarded while both sides warm up, then measured for the ratio.
const WARMUP_ROUNDS = 3;
/** Fresh isolates whose first answer gives the cold start (their median). */
const COLD_STARTS = 3;
const RATIO_ROUNDS = 40;

const run = (args) => execFileSync(NATIVE, args, { env: { ...process.env, RUST_LOG: "warn" }, maxBuffer: 1 << 30 });
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];

function files(dir, prefix = "") {
  return readdirSync(join(dir, prefix), { withFileTypes: true }).flatMap((entry) => {
    const key = prefix ? `${prefix}/${entry.name}` : entry.name;
    return entry.isDirectory() ? files(dir, key) : [[key, join(dir, key)]];
  });
}

async function timed(url) {
  const started = performance.now();
  const response = await fetch(url);
  await response.arrayBuffer();
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  const timing = /search;dur=(\d+(\.\d+)?)/.exec(response.headers.get("server-timing") || "");
  return { ms: performance.now() - started, serverMs: timing && Number(timing[1]) };
}

/** The native search core as a long-lived process: one query per line in, its microseconds out. */
function nativeServer(snapshot) {
  const child = spawn("cargo", ["bench", "-q", "-p", "pubsearch-shared", "--bench", "search"], {
    cwd: ROOT, env: { ...process.env, SNAPSHOT: snapshot, SERVE: "1" }, stdio: ["pipe", "pipe", "inherit"],
  });
  const waiting = [];
  createInterface({ input: child.stdout }).on("line", (line) => waiting.shift()(Number(line)));
  return {
    queryUs: (query) => new Promise((resolve) => { waiting.push(resolve); child.stdin.write(`${query}\n`); }),
    close: () => child.stdin.end(),
  };
}

/** Worker and native time for the same queries, taken in turn so both see the same machine noise. */
async function interleaved(base, snapshot) {
  const native = nativeServer(snapshot);
  let workerMs = 0, nativeMs = 0, count = 0;
  for (let round = 0; round < WARMUP_ROUNDS + RATIO_ROUNDS; round++) {
    for (const query of QUERIES) {
      const { serverMs } = await timed(`${base}/search?q=${encodeURIComponent(query)}`);
      const us = await native.queryUs(query);
      if (round < WARMUP_ROUNDS) continue;
      workerMs += serverMs;
      nativeMs += us / 1000;
      count += 1;
    }
  }
  native.close();
  return { workerMs: workerMs / count, nativeMs: nativeMs / count };
}

/** A fresh Miniflare isolate running the built Worker, its local R2 seeded with `published`. */
async function startWorker(published) {
  const mf = new Miniflare({
    modules: true, scriptPath: join(ROOT, "edge", "build", "index.js"),
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
    compatibilityDate: "2026-04-01", r2Buckets: ["SNAPSHOTS"],
    bindings: { SNAPSHOT_CHANNEL: "prod", POINTER_CHECK_SECONDS: "3600" }, host: "127.0.0.1", port: 0,
  });
  const base = (await mf.ready).toString().replace(/\/$/, "");
  const bucket = await mf.getR2Bucket("SNAPSHOTS");
  for (const [key, path] of files(published)) await bucket.put(key, Uint8Array.from(readFileSync(path)));
  return { mf, base };
}

const wasm = readFileSync(join(ROOT, "edge", "build", "index_bg.wasm"));
const js = readFileSync(join(ROOT, "edge", "build", "index.js"));
console.log(`bundle: wasm ${(wasm.length / 1e6).toFixed(2)} MB raw, ${(gzipSync(wasm).length / 1e6).toFixed(2)} MB gzip; js ${(js.length / 1e3).toFixed(1)} kB`);
console.log(`| documents | snapshot MB | cold start ms (median of ${COLD_STARTS}) | warm p50 ms | warm p99 ms | health p50 ms | worker query ms (Server-Timing mean) | native query ms (mean, interleaved) | ratio | wasm memory MB |`);
console.log("|---|---|---|---|---|---|---|---|---|---|");
for (const size of sizes) {
  const dir = mkdtempSync(join(tmpdir(), "pubsearch-edge-bench-"));
  const corpus = join(dir, "corpus.ndjson");
  run(["gen-corpus", "--records", String(size), "--seed", "3", "--out", corpus]);
  run(["run", "--replay", corpus, "--data-dir", dir, "--admin-addr", "off", "--publish-minutes", "0"]);
  const manifest = JSON.parse(run(["publish", "--data-dir", dir, "--snapshot-dir", join(dir, "pub"), "--force"]).toString());
  // Cold start: the first search of a fresh isolate, which loads the build from R2. A median of
  // COLD_STARTS isolates, since one sample swings by a third on this machine; the last one stays
  // up for the warm measurements.
  const coldStarts = [];
  let mf, base;
  for (let i = 0; i < COLD_STARTS; i++) {
    if (mf) await mf.dispose();
    ({ mf, base } = await startWorker(join(dir, "pub")));
    coldStarts.push((await timed(`${base}/search?q=ka`)).ms);
  }
  coldStarts.sort((a, b) => a - b);
  const cold = pct(coldStarts, 0.5);
  const warm = [];
  const health = [];
  for (let i = 0; i < 400; i++) {
    warm.push((await timed(`${base}/search?q=${encodeURIComponent(QUERIES[i % QUERIES.length])}`)).ms);
    health.push((await timed(`${base}/health`)).ms);
  }
  warm.sort((a, b) => a - b);
  health.sort((a, b) => a - b);
  const stats = await (await fetch(`${base}/stats`)).json();
  // In-worker time of the search core (Date.now() around it; it advances locally in workerd),
  // against the native core answering the same query right after it.
  const { workerMs, nativeMs } = await interleaved(base, join(dir, "pub", manifest.artifact));
  await mf.dispose();
  rmSync(dir, { recursive: true, force: true });
  console.log(`| ${manifest.counts.documents} | ${(manifest.byte_size / 1e6).toFixed(1)} | ${cold.toFixed(0)} | ${pct(warm, 0.5).toFixed(2)} | ${pct(warm, 0.99).toFixed(2)} | ${pct(health, 0.5).toFixed(2)} | ${workerMs.toFixed(2)} | ${nativeMs.toFixed(2)} | ${(workerMs / nativeMs).toFixed(2)} | ${(stats.wasm_memory_bytes / 1e6).toFixed(1)} |`);
}
