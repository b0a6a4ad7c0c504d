// Freshness benchmark: prints a table. Run by hand (not in CI):
//   cargo build --release -p pubsearch-native-worker && worker-build --release --no-opt edge
//   node edge/bench/freshness.mjs [events, default 240] [events per second, default 2] [base records, default 5000]
//
// `native-worker run --replay` (release) reads Jetstream events from a named pipe with default
// publishing settings (a delta every 10 s, a base every 15 minutes); its published directory is
// mirrored into the local R2 bucket of the Worker in workerd, which reads the pointer with its
// default interval (5 s). After a base corpus is in service, new posts are written to the pipe
// at a steady rate; each one's latency runs from its event time to the first edge answer that
// contains it (`/document`, polled every 250 ms; it reads base and delta as `/search` does). The
// cost columns come from the same run: deltas built, bytes written to the bucket, the
// publisher's object-store requests (its `/stats`) and the Worker's R2 reads (its `/stats`),
// scaled to an hour or a day.
import { createServer } from "node:net";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { entryEvent, startPipeline } from "../tests/pipeline.mjs";
import { ROOT, startWorker } from "../tests/support.mjs";

const EVENTS = Number(process.argv[2] || 240);
const RATE = Number(process.argv[3] || 2);
const BASE_RECORDS = Number(process.argv[4] || 5000);
const POLL_MS = 250;
const DRAIN_MS = 120_000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const quantile = (values, q) => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor(q * values.length))];

/** A loopback port nothing listens on right now. */
async function freePort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const admin = `127.0.0.1:${await freePort()}`;
const adminStats = async () => (await fetch(`http://${admin}/stats`)).json();
const { mf, url, bucket } = await startWorker({ POINTER_CHECK_SECONDS: "5" });
const edgeStats = async () => (await (await fetch(`${url}/stats`)).json()).snapshot;
const pipeline = await startPipeline(bucket, { deltaSeconds: 10, profile: "release", adminAddr: admin });
try {
  const corpus = join(mkdtempSync(join(tmpdir(), "pubsearch-freshbench-")), "base.ndjson");
  execFileSync(join(ROOT, "target", "release", "native-worker"), ["gen-corpus", "--records", String(BASE_RECORDS), "--seed", "3", "--out", corpus]);
  await pipeline.sendLines(readFileSync(corpus, "utf8"));
  process.stderr.write(`base corpus of ${BASE_RECORDS} records sent; waiting for it to be served\n`);
  for (let i = 0; ; i++) {
    // `/snapshot` loads the build if it can (`/health` only reports one already loaded).
    if ((await fetch(`${url}/snapshot`)).status === 200) break;
    if (i > 2400) throw new Error(`no build served after 10 minutes\n${pipeline.log()}`);
    await sleep(POLL_MS);
  }

  const [mirroredBefore, publisherBefore, edgeBefore] = [pipeline.mirrored(), (await adminStats()).object_store_operations, await edgeStats()];
  const started = Date.now();
  const sent = new Map();
  const latencies = [];
  let next = 0;
  const sender = (async () => {
    for (; next < EVENTS; next++) {
      const at = started + (next * 1000) / RATE;
      if (at > Date.now()) await sleep(at - Date.now());
      const event = entryEvent(`did:plc:bench${next % 17}`, `3kbench${next}`, `3l${next}`, "create", `Bench post ${next}`, `benchword${next}`);
      sent.set(`at://${event.did}/com.whtwnd.blog.entry/3kbench${next}`, event.time_us / 1000);
      pipeline.send(event);
    }
  })();
  for (;;) {
    const pending = [...sent.keys()].slice(0, 25);
    if (pending.length) {
      const response = await fetch(`${url}/document?uri=${pending.map(encodeURIComponent).join(",")}`);
      if (response.status === 200) {
        const seenAt = Date.now();
        for (const document of (await response.json()).documents) {
          latencies.push(seenAt - sent.get(document.uri));
          sent.delete(document.uri);
        }
      }
    }
    if (next >= EVENTS && sent.size === 0) break;
    if (next >= EVENTS && Date.now() - started > (EVENTS * 1000) / RATE + DRAIN_MS) break;
    await sleep(POLL_MS);
  }
  await sender;
  const seconds = (Date.now() - started) / 1000;
  const [mirrored, publisher, edge] = [pipeline.mirrored(), (await adminStats()).object_store_operations, await edgeStats()];
  const perHour = (n) => (n * 3600) / seconds;
  const perDay = (n) => Math.round((n * 86400) / seconds);
  const classA = publisher.puts + publisher.lists - publisherBefore.puts - publisherBefore.lists;
  const classB = publisher.gets + publisher.heads - publisherBefore.gets - publisherBefore.heads;
  const edgeReads = edge.pointer_reads + edge.delta_loads - edgeBefore.pointer_reads - edgeBefore.delta_loads;

  console.log(`\nfreshness: ${EVENTS} posts at ${RATE}/s over a base of ${BASE_RECORDS} records; a delta every 10 s, pointer read every 5 s; ${seconds.toFixed(0)} s`);
  console.log("| event → first edge answer | posts seen | p50 | p95 | max |");
  console.log("| --- | ---: | ---: | ---: | ---: |");
  console.log(`| default settings | ${latencies.length}/${EVENTS} | ${(quantile(latencies, 0.5) / 1000).toFixed(1)} s | ${(quantile(latencies, 0.95) / 1000).toFixed(1)} s | ${(Math.max(...latencies) / 1000).toFixed(1)} s |`);
  console.log("\n| cost | measured | per hour | per day |");
  console.log("| --- | ---: | ---: | ---: |");
  console.log(`| deltas published | ${mirrored.deltas - mirroredBefore.deltas} | ${perHour(mirrored.deltas - mirroredBefore.deltas).toFixed(0)} | ${perDay(mirrored.deltas - mirroredBefore.deltas)} |`);
  console.log(`| bytes written to the bucket | ${mirrored.bytes - mirroredBefore.bytes} | ${(perHour(mirrored.bytes - mirroredBefore.bytes) / 1e6).toFixed(1)} MB | ${(perDay(mirrored.bytes - mirroredBefore.bytes) / 1e9).toFixed(2)} GB |`);
  console.log(`| publisher class A (PUT, LIST) | ${classA} | ${perHour(classA).toFixed(0)} | ${perDay(classA)} |`);
  console.log(`| publisher class B (GET, HEAD) | ${classB} | ${perHour(classB).toFixed(0)} | ${perDay(classB)} |`);
  console.log(`| edge R2 reads, one busy isolate (pointer, deltas) | ${edgeReads} | ${perHour(edgeReads).toFixed(0)} | ${perDay(edgeReads)} |`);
  if (latencies.length < EVENTS) process.exitCode = 1;
} finally {
  await pipeline.stop();
  await mf.dispose();
}
