// Freshness end to end (ARCHITECTURE.md, "Deltas"): `native-worker run --replay` reads events
// from a pipe as the test writes them, publishing a delta every second; the built Worker in
// workerd reads the published objects from its local R2 bucket. A new post becomes searchable,
// an edit changes its title, a delete and an account takedown make posts vanish, each within a
// bound, and no answer ever goes back to an earlier state.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { accountEvent, entryEvent, startPipeline } from "./pipeline.mjs";
import { nativeSearch, startWorker } from "./support.mjs";

/** Each change must show at the edge within this (generous for CI; the bench measures). */
const BOUND_MS = 30_000;
const POLL_MS = 250;

/** The titles `/search` finds for `q`, by URI; none while nothing has been published yet. */
async function titles(url, q, published) {
  const response = await fetch(`${url}/search?q=${encodeURIComponent(q)}&format=v2&limit=40`);
  if (response.status === 503 && !published) return new Map();
  assert.equal(response.status, 200, await response.clone().text());
  const body = await response.json();
  return new Map(body.results.map((result) => [result.uri, result.title]));
}

for (const [mode, bindings] of [["resident", {}], ["paged", { RESIDENT_MAX_MB: "0" }]]) {
  test(`${mode}: a post, its edit, its delete and a takedown reach the edge within the bound, and never flicker back`, (t) =>
    freshness(t, mode, bindings));
}

async function freshness(t, mode, bindings) {
  const { mf, url, bucket } = await startWorker({ POINTER_CHECK_SECONDS: "1", ...bindings });
  const pipeline = await startPipeline(bucket);
  t.after(async () => {
    await pipeline.stop();
    await mf.dispose();
  });
  const alice = "did:plc:freshalice";
  const bob = "did:plc:freshbob";
  const post = `at://${alice}/com.whtwnd.blog.entry/3kfresh`;
  const bobs = `at://${bob}/com.whtwnd.blog.entry/3kbob`;
  // Some history first, so the base is not empty.
  for (let i = 0; i < 50; i++) {
    pipeline.send(entryEvent(`did:plc:older${i % 5}`, `3kold${i}`, `3l${1000 + i}`, "create", `Older ${i}`, "archive notes"));
  }
  pipeline.send(entryEvent(bob, "3kbob", "3l2000", "create", "Bob on marmosets", "marmoset troop"));

  // Every poll checks every invariant established so far: an answer never goes back.
  const invariants = [];
  const timings = {};
  async function until(label, reached) {
    const started = Date.now();
    for (;;) {
      const published = invariants.length > 0;
      const answers = {
        zephyrine: await titles(url, "zephyrine", published),
        quillback: await titles(url, "quillback", published),
        marmoset: await titles(url, "marmoset", published),
      };
      for (const [name, invariant] of invariants) assert.ok(invariant(answers), `${name} flickered back while waiting for ${label}`);
      if (reached(answers)) {
        timings[label] = Date.now() - started;
        return;
      }
      assert.ok(Date.now() - started < BOUND_MS, `${label} not seen within ${BOUND_MS} ms\n${pipeline.log()}`);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  await until("bob's post", (a) => a.marmoset.has(bobs));
  pipeline.send(entryEvent(alice, "3kfresh", "3l3000", "create", "Zephyrine lighthouse", "zephyrine keepers"));
  await until("the new post", (a) => a.zephyrine.get(post) === "Zephyrine lighthouse");
  invariants.push(["the new post", (a) => a.zephyrine.has(post) || a.quillback.has(post)]);
  invariants.push(["bob's post", (a) => a.marmoset.has(bobs)]);

  pipeline.send(entryEvent(alice, "3kfresh", "3l3001", "update", "Quillback lighthouse", "zephyrine quillback keepers"));
  await until("the edit", (a) => a.quillback.get(post) === "Quillback lighthouse");
  invariants.push(["the edit", (a) => a.zephyrine.get(post) !== "Zephyrine lighthouse"]);

  invariants.splice(0, 1); // the post is about to go
  pipeline.send(entryEvent(alice, "3kfresh", "3l3002", "delete"));
  await until("the delete", (a) => !a.zephyrine.has(post) && !a.quillback.has(post));
  invariants.push(["the delete", (a) => !a.zephyrine.has(post) && !a.quillback.has(post)]);

  invariants.splice(invariants.findIndex(([name]) => name === "bob's post"), 1);
  pipeline.send(accountEvent(bob, false, "takendown"));
  await until("the takedown", (a) => !a.marmoset.has(bobs));
  invariants.push(["the takedown", (a) => !a.marmoset.has(bobs)]);

  // A last few polls: nothing comes back.
  for (let i = 0; i < 8; i++) {
    await until("the end", () => true);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  // Parity: once the edge serves the last published pair, it answers as `native-worker search
  // --delta` does on the same two files.
  await pipeline.stop();
  const pointer = JSON.parse(readFileSync(join(pipeline.dir, "published", "channels/prod/latest.json")));
  assert.ok(pointer.delta, "the pointer names a delta");
  await until("the last delta", () => true);
  for (let i = 0; ; i++) {
    const live = (await (await fetch(`${url}/stats`)).json()).snapshot.delta;
    if (live?.build_id === pointer.delta.build_id) break;
    assert.ok(i < 40, `the edge never adopted delta ${pointer.delta.build_id}`);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  const [base, delta] = [pointer.artifact, pointer.delta.artifact].map((key) => join(pipeline.dir, "published", key));
  for (const params of [{ q: "archive" }, { q: "gardens", format: "v2", limit: "7" }, { q: "marmoset quillback" }]) {
    const edge = await (await fetch(`${url}/search?${new URLSearchParams(params)}`)).json();
    assert.deepEqual(edge, nativeSearch(base, params, delta), JSON.stringify(params));
  }
  const stats = await (await fetch(`${url}/stats`)).json();
  assert.ok(stats.snapshot.delta, "a delta is live");
  assert.equal(stats.snapshot.paged, mode === "paged");
  assert.equal(stats.snapshot.delta.source_watermark_us, stats.source_watermark_us);
  t.diagnostic(`${mode}: seen after (ms): ${JSON.stringify(timings)}`);
}
