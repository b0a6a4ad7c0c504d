// The edge Worker, built by worker-build, answering in workerd (wrangler's local runtime).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { unstable_dev } from "wrangler";

let worker;

before(async () => {
  worker = await unstable_dev("edge/build/index.js", {
    config: "wrangler.toml",
    local: true,
    ip: "127.0.0.1",
    logLevel: "warn",
    experimental: { disableExperimentalWarning: true },
  });
});

after(async () => {
  await worker?.stop();
});

test("GET /health answers ok with the versions the edge speaks", async () => {
  const response = await worker.fetch("/health");
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /application\/json/);
  const body = await response.json();
  assert.equal(body.status, "ok");
  assert.equal(body.service, "pubsearch-edge");
  assert.equal(typeof body.schema_version, "number");
});

test("unknown paths are a JSON 404", async () => {
  const response = await worker.fetch("/no-such-page");
  assert.equal(response.status, 404);
  assert.deepEqual(await response.json(), { error: "not found" });
});
