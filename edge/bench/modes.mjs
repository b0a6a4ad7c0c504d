// Edge benchmark of the search modes (issue #24): prints tables. Run by hand (not in CI):
//   scripts/install-toolchain.sh   # the embedding model
//   cargo build -p pubsearch-native-worker && worker-build --release --no-opt edge
//   node edge/bench/modes.mjs [corpus records, default 10000]
//
// Publishes the synthetic corpus twice with the native pipeline, with the embedding model and
// without it (PUBSEARCH_EMBED=off), and reports what the model and the vectors add to the
// snapshot. Then asks a resident Worker (the whole build in memory) and a paged one (its default
// 32 MB chunk cache) every query in each mode, interleaved with the order of the modes rotating,
// so no mode always runs on pages another just read, and reports the Worker's own time per query
// (Server-Timing, whole milliseconds) by mode, its ratio to keyword, and the isolate's wasm memory
// afterwards.
import { statSync } from "node:fs";
import { join } from "node:path";
import { publishSnapshots, objectsUnder, startWorker } from "../tests/support.mjs";

const records = Number(process.argv[2] || 10000);
const MODES = ["keyword", "semantic", "hybrid"];
const SYLLABLES = ["ka", "lo", "mi", "ra", "ten", "su", "vo", "ne", "shi", "da", "pe", "lu", "gor", "an", "el"];
const QUERIES = SYLLABLES.flatMap((s, i) => [s, `${s} ${SYLLABLES[(i + 4) % SYLLABLES.length]}`]);
const ROUNDS = 5;
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];

function publish(embed) {
  const saved = process.env.PUBSEARCH_EMBED;
  if (embed) delete process.env.PUBSEARCH_EMBED;
  else process.env.PUBSEARCH_EMBED = "off";
  try {
    return publishSnapshots(records, 1);
  } finally {
    if (saved === undefined) delete process.env.PUBSEARCH_EMBED;
    else process.env.PUBSEARCH_EMBED = saved;
  }
}

const withModel = publish(true);
const without = publish(false);
const [manifest] = withModel.manifests;
const documents = manifest.counts.documents;
const size = (snapshots) => statSync(join(snapshots.published, snapshots.manifests[0].artifact)).size;
const added = size(withModel) - size(without);
console.log(`\n${records} records, ${documents} documents\n`);
console.log("| snapshot | bytes | bytes per document |");
console.log("|---|---|---|");
console.log(`| without the model | ${size(without)} | ${(size(without) / documents).toFixed(0)} |`);
console.log(`| with the model and vectors | ${size(withModel)} | ${(size(withModel) / documents).toFixed(0)} |`);
console.log(`| added | ${added} | ${(added / documents).toFixed(0)} (the model's ~8 MB included) |`);

async function serverMs(base, query, mode) {
  const response = await fetch(`${base}/search?q=${encodeURIComponent(query)}&mode=${mode}`);
  await response.arrayBuffer();
  if (!response.ok) throw new Error(`${query} ${mode}: ${response.status}`);
  const timing = /search;dur=(\d+(\.\d+)?)/.exec(response.headers.get("server-timing") || "");
  return Number(timing[1]);
}

console.log(`\n${QUERIES.length} queries × ${ROUNDS} rounds per mode, interleaved; Worker time per query (Server-Timing)\n`);
console.log("| worker | mode | p50 ms | p95 ms | mean ms | mean vs keyword | wasm memory MB |");
console.log("|---|---|---|---|---|---|---|");
for (const [name, bindings] of [["resident", { RESIDENT_MAX_MB: "120" }], ["paged (32 MB cache)", { RESIDENT_MAX_MB: "0" }]]) {
  const worker = await startWorker(bindings);
  for (const [key, bytes] of objectsUnder(withModel.published)) await worker.bucket.put(key, Uint8Array.from(bytes));
  for (let i = 0; i < 200 && (await fetch(`${worker.url}/search?q=ka`)).status !== 200; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  // Warm-up: every query once in every mode.
  for (const query of QUERIES) for (const mode of MODES) await serverMs(worker.url, query, mode);
  const times = Object.fromEntries(MODES.map((mode) => [mode, []]));
  let turn = 0;
  for (let round = 0; round < ROUNDS; round++) {
    for (const query of QUERIES) {
      turn++;
      for (let i = 0; i < MODES.length; i++) {
        const mode = MODES[(i + turn) % MODES.length];
        times[mode].push(await serverMs(worker.url, query, mode));
      }
    }
  }
  const stats = await (await fetch(`${worker.url}/stats`)).json();
  const mean = (list) => list.reduce((a, b) => a + b, 0) / list.length;
  for (const mode of MODES) {
    const sorted = [...times[mode]].sort((a, b) => a - b);
    console.log(`| ${name} | ${mode} | ${pct(sorted, 0.5).toFixed(2)} | ${pct(sorted, 0.95).toFixed(2)} | ${mean(sorted).toFixed(2)} | ` +
      `${(mean(sorted) / mean(times.keyword)).toFixed(2)} | ${(stats.wasm_memory_bytes / 1e6).toFixed(1)} |`);
  }
  await worker.mf.dispose();
}
