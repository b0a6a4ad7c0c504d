// A publishing pipeline for freshness tests and the freshness bench: `native-worker run
// --replay` reading Jetstream events from a named pipe as they are written, publishing a base
// and then deltas to a directory, mirrored into the Worker's local R2 bucket.
import { execFileSync, spawn } from "node:child_process";
import { createWriteStream, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, objectsUnder } from "./support.mjs";

/** A Jetstream commit event for a whitewind entry. */
export function entryEvent(did, rkey, rev, operation, title, words) {
  const commit = { rev, operation, collection: "com.whtwnd.blog.entry", rkey };
  if (operation !== "delete") {
    commit.cid = `bafy${rev}`;
    commit.record = {
      $type: "com.whtwnd.blog.entry",
      title,
      content: `${words} and some ordinary text about gardens and rivers`,
      createdAt: new Date().toISOString(),
      visibility: "public",
    };
  }
  return { did, time_us: Date.now() * 1000, kind: "commit", commit };
}

/** A Jetstream account event: `active: false` with a status takes an account down. */
export function accountEvent(did, active, status) {
  return {
    did,
    time_us: Date.now() * 1000,
    kind: "account",
    account: { active, status, seq: Date.now(), time: new Date().toISOString() },
  };
}

/**
 * Starts `native-worker run` reading events from a named pipe, publishing to a directory (a
 * base, then a delta every `deltaSeconds`), and mirrors that directory into the Worker's R2
 * bucket the way an S3 upload would land: every object first, the pointer read before them and
 * written last. Returns `send(event)` and `stop()`.
 */
export async function startPipeline(bucket, { deltaSeconds = 1, profile = "debug", adminAddr = "off" } = {}) {
  const native = join(ROOT, "target", profile, "native-worker");
  const dir = mkdtempSync(join(tmpdir(), "pubsearch-fresh-"));
  const fifo = join(dir, "events.fifo");
  execFileSync("mkfifo", [fifo]);
  const published = join(dir, "published");
  const worker = spawn(
    native,
    ["run", "--replay", fifo, "--data-dir", dir, "--admin-addr", adminAddr, "--serve-addr", "off", "--snapshot-dir", published,
      "--publish-minutes", "60", "--delta-seconds", String(deltaSeconds)],
    { env: { ...process.env, RUST_LOG: "warn" }, stdio: ["ignore", "ignore", "pipe"] },
  );
  let log = "";
  worker.stderr.on("data", (data) => { log += data; });
  const pipe = createWriteStream(fifo);
  await new Promise((resolve, reject) => { pipe.once("open", resolve); pipe.once("error", reject); });

  const copied = new Map();
  let mirroring = true;
  const mirrored = { puts: 0, bytes: 0, deltas: new Set() };
  const mirror = (async () => {
    const pointerKey = "channels/prod/latest.json";
    while (mirroring) {
      let pointer = null;
      try { pointer = readFileSync(join(published, pointerKey)); } catch { /* nothing published yet */ }
      if (pointer) {
        for (const [key, bytes, modified] of objectsUnder(published)) {
          if (key === pointerKey || key.endsWith(".lock")) continue;
          const stamp = `${bytes.length}:${modified}`;
          if (copied.get(key) === stamp) continue;
          await bucket.put(key, Uint8Array.from(bytes));
          copied.set(key, stamp);
          mirrored.puts++;
          mirrored.bytes += bytes.length;
          if (key.startsWith("deltas/")) mirrored.deltas.add(key.split("/")[2]);
        }
        if (copied.get(pointerKey) !== pointer.toString()) {
          await bucket.put(pointerKey, Uint8Array.from(pointer));
          copied.set(pointerKey, pointer.toString());
          mirrored.puts++;
          mirrored.bytes += pointer.length;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();

  return {
    dir,
    send(event) {
      pipe.write(`${JSON.stringify(event)}\n`);
    },
    /** Writes NDJSON lines as they are (a corpus file), waiting while the pipe is full. */
    async sendLines(text) {
      if (!pipe.write(text)) await new Promise((resolve) => pipe.once("drain", resolve));
    },
    /** What reached the bucket so far: objects written, their bytes, distinct deltas. */
    mirrored: () => ({ puts: mirrored.puts, bytes: mirrored.bytes, deltas: mirrored.deltas.size }),
    log: () => log,
    async stop() {
      if (!mirroring) return;
      pipe.end();
      const exited = new Promise((resolve) => worker.once("exit", resolve));
      const timer = setTimeout(() => worker.kill("SIGKILL"), 20_000);
      await exited;
      clearTimeout(timer);
      mirroring = false;
      await mirror;
    },
  };
}

