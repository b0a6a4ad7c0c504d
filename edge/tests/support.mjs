// Test support for the edge Worker: real snapshots built by the native pipeline, and the built
// Worker running in workerd through Miniflare with a local R2 bucket.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const NATIVE = join(ROOT, "target", "debug", "native-worker");

/** The embedding model the test command installs: builds published here carry its vectors. */
const MODEL_DIR = join(ROOT, "target", "models", "all-minilm-l6-v2");

function native(args, options = {}) {
  const env = { PUBSEARCH_MODEL_DIR: MODEL_DIR, ...process.env, RUST_LOG: "warn" };
  return execFileSync(NATIVE, args, { env, ...options });
}

/** Builds a store from a synthetic corpus and publishes `builds` snapshots of it to a directory. */
export function publishSnapshots(records, builds) {
  const dir = mkdtempSync(join(tmpdir(), "pubsearch-edge-"));
  const corpus = join(dir, "corpus.ndjson");
  native(["gen-corpus", "--records", String(records), "--seed", "5", "--out", corpus]);
  native(["run", "--replay", corpus, "--data-dir", dir, "--admin-addr", "off", "--serve-addr", "off", "--publish-minutes", "0"]);
  const published = join(dir, "published");
  const manifests = [];
  for (let i = 0; i < builds; i++) {
    const out = native(["publish", "--data-dir", dir, "--snapshot-dir", published]);
    manifests.push(JSON.parse(out.toString()));
  }
  return { dir, published, manifests };
}

/** Every file under `dir`, as [key, bytes] with `/`-separated keys. */
export function objectsUnder(dir, prefix = "") {
  const objects = [];
  for (const entry of readdirSync(join(dir, prefix), { withFileTypes: true })) {
    const key = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) {
      objects.push(...objectsUnder(dir, key));
      continue;
    }
    // `key#n` is an upload in progress (object_store stages a file so, then renames it), and a
    // directory a running worker writes to can lose a file between listing and reading.
    if (entry.name.includes("#")) continue;
    try {
      objects.push([key, readFileSync(join(dir, key)), statSync(join(dir, key)).mtimeMs]);
    } catch (error) {
      if (error.code !== "ENOENT") throw error;
    }
  }
  return objects;
}

/** What the native side answers for a query on a snapshot file (and a delta over it): the parity reference. */
export function nativeSearch(snapshotPath, params, deltaPath) {
  const args = ["search", "--snapshot", snapshotPath];
  if (deltaPath) args.push("--delta", deltaPath);
  let query = "";
  for (const [key, value] of Object.entries(params)) {
    if (key === "q") query = value;
    else args.push("--param", `${key}=${value}`);
  }
  args.push("--", query);
  return JSON.parse(native(args).toString());
}

/** Starts the built Worker in workerd with an empty local R2 bucket; `options` go to Miniflare. */
export async function startWorker(bindings = {}, options = {}) {
  const mf = new Miniflare({
    modules: true,
    scriptPath: join(ROOT, "edge", "build", "index.js"),
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
    compatibilityDate: "2026-04-01",
    r2Buckets: ["SNAPSHOTS"],
    bindings: { SNAPSHOT_CHANNEL: "prod", POINTER_CHECK_SECONDS: "0", ...bindings },
    host: "127.0.0.1",
    port: 0,
    ...options,
  });
  const url = await mf.ready;
  const bucket = await mf.getR2Bucket("SNAPSHOTS");
  return { mf, url: url.toString().replace(/\/$/, ""), bucket };
}

export { writeFileSync, mkdirSync, join };
