// Drives a running `sirenia serve` with the official EventStoreDB Node.js client.
//
// node client.test.mjs URL FIXTURE OUTPUT
//   URL      esdb://host:port?tls=false
//   FIXTURE  JSON written by the Rust side: the events it appended through the Sirenia library
//   OUTPUT   JSON this script writes: the events it appended, for the Rust side to check
//
// Every check throws on failure; the exit code tells the Rust test.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import {
  ANY,
  BACKWARDS,
  END,
  EventStoreDBClient,
  FORWARDS,
  NO_STREAM,
  START,
  STREAM_EXISTS,
  StreamDeletedError,
  StreamNotFoundError,
  WrongExpectedVersionError,
  binaryEvent,
  eventTypeFilter,
  jsonEvent,
  streamNameFilter,
} from "@eventstore/db-client";

const [url, fixturePath, outputPath] = process.argv.slice(2);
const client = EventStoreDBClient.connectionString(url);
const checks = [];
const check = (name, fn) => checks.push([name, fn]);

const collect = async (iterable) => {
  const out = [];
  for await (const resolved of iterable) out.push(resolved.event);
  return out;
};

const rejects = async (promise, type) => {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof type, `expected ${type.name}, got ${error?.constructor?.name}: ${error?.message}`);
    return error;
  }
  assert.fail(`expected ${type.name}, nothing was thrown`);
};

// Reads `subscription` until `done({ events, caughtUp })` holds, failing after a bound.
const until = (subscription, done) =>
  new Promise((resolve, reject) => {
    const events = [];
    let caughtUp = false;
    const timer = setTimeout(() => reject(new Error(`subscription stalled after ${events.length} events`)), 20_000);
    const finish = () => {
      if (done({ events, caughtUp })) {
        clearTimeout(timer);
        resolve({ events, caughtUp });
      }
    };
    subscription.on("caughtUp", () => {
      caughtUp = true;
      finish();
    });
    subscription.on("data", (resolved) => {
      events.push(resolved.event);
      finish();
    });
    subscription.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });

check("append with each expected revision kind", async () => {
  const stream = "order-1";
  let r = await client.appendToStream(stream, jsonEvent({ type: "Placed", data: { n: 0 } }), { expectedRevision: NO_STREAM });
  assert.equal(r.success, true);
  assert.equal(r.nextExpectedRevision, 0n);
  assert.ok(r.position.commit > 0n);
  r = await client.appendToStream(stream, jsonEvent({ type: "Paid", data: { n: 1 } }), { expectedRevision: 0n });
  assert.equal(r.nextExpectedRevision, 1n);
  r = await client.appendToStream(stream, jsonEvent({ type: "Packed", data: { n: 2 } }), { expectedRevision: STREAM_EXISTS });
  assert.equal(r.nextExpectedRevision, 2n);
  r = await client.appendToStream(
    stream,
    [jsonEvent({ type: "Shipped", data: { n: 3 } }), jsonEvent({ type: "Delivered", data: { n: 4 } })],
    { expectedRevision: ANY },
  );
  assert.equal(r.nextExpectedRevision, 4n);
});

check("a wrong expected revision is WrongExpectedVersionError and writes nothing", async () => {
  const stream = "order-1";
  let e = await rejects(client.appendToStream(stream, jsonEvent({ type: "X", data: {} }), { expectedRevision: NO_STREAM }), WrongExpectedVersionError);
  assert.equal(e.actualVersion, 4n);
  e = await rejects(client.appendToStream(stream, jsonEvent({ type: "X", data: {} }), { expectedRevision: 1n }), WrongExpectedVersionError);
  assert.equal(e.expectedVersion, 1n);
  assert.equal(e.actualVersion, 4n);
  e = await rejects(client.appendToStream("order-none", jsonEvent({ type: "X", data: {} }), { expectedRevision: STREAM_EXISTS }), WrongExpectedVersionError);
  assert.equal(e.actualVersion, "no_stream");
  const events = await collect(client.readStream(stream));
  assert.equal(events.length, 5);
});

check("read a stream forwards and backwards, from a revision, with a count", async () => {
  const forwards = await collect(client.readStream("order-1", { direction: FORWARDS, fromRevision: START }));
  assert.deepEqual(forwards.map((e) => e.type), ["Placed", "Paid", "Packed", "Shipped", "Delivered"]);
  assert.deepEqual(forwards.map((e) => e.revision), [0n, 1n, 2n, 3n, 4n]);
  assert.deepEqual(forwards.map((e) => e.data.n), [0, 1, 2, 3, 4]);
  for (const e of forwards) {
    assert.equal(e.streamId, "order-1");
    assert.equal(e.isJson, true);
    assert.ok(e.created instanceof Date && Math.abs(Date.now() - e.created.getTime()) < 600_000);
  }
  const backwards = await collect(client.readStream("order-1", { direction: BACKWARDS, fromRevision: END, maxCount: 2 }));
  assert.deepEqual(backwards.map((e) => e.revision), [4n, 3n]);
  const middle = await collect(client.readStream("order-1", { direction: FORWARDS, fromRevision: 1n, maxCount: 2 }));
  assert.deepEqual(middle.map((e) => e.type), ["Paid", "Packed"]);
  const back = await collect(client.readStream("order-1", { direction: BACKWARDS, fromRevision: 2n }));
  assert.deepEqual(back.map((e) => e.revision), [2n, 1n, 0n]);
});

check("an unknown stream is StreamNotFoundError", async () => {
  await rejects(collect(client.readStream("nobody-here")), StreamNotFoundError);
});

check("ids, types, data and metadata round-trip exactly", async () => {
  const id = randomUUID();
  const binaryId = randomUUID();
  const bytes = new Uint8Array([0, 1, 2, 254, 255]);
  const rawMeta = new Uint8Array([9, 8, 7]);
  await client.appendToStream("exact-1", [
    jsonEvent({ id, type: "Noted", data: { text: "héllo", list: [1, 2, { deep: true }] }, metadata: { $correlationId: "corr-1", $causationId: "cause-1", tenant: "t1" } }),
    binaryEvent({ id: binaryId, type: "Blob", data: bytes, metadata: rawMeta }),
  ]);
  const [json, binary] = await collect(client.readStream("exact-1"));
  assert.equal(json.id, id);
  assert.equal(json.type, "Noted");
  assert.deepEqual(json.data, { text: "héllo", list: [1, 2, { deep: true }] });
  assert.deepEqual(json.metadata, { $correlationId: "corr-1", $causationId: "cause-1", tenant: "t1" });
  assert.equal(binary.id, binaryId);
  assert.equal(binary.isJson, false);
  assert.deepEqual(Buffer.from(binary.data), Buffer.from(bytes));
  assert.deepEqual(Buffer.from(binary.metadata), Buffer.from(rawMeta));
});

check("large events: three of a megabyte in one append", async () => {
  const big = (n) => binaryEvent({ type: "Big", data: new Uint8Array(1_000_000).fill(n) });
  await client.appendToStream("large-1", [big(1), big(2), big(3)], { expectedRevision: NO_STREAM });
  const events = await collect(client.readStream("large-1"));
  assert.deepEqual(events.map((e) => [e.data.length, e.data[0]]), [[1_000_000, 1], [1_000_000, 2], [1_000_000, 3]]);
});

check("read $all forwards and backwards", async () => {
  const all = await collect(client.readAll({ direction: FORWARDS, fromPosition: START }));
  assert.ok(all.length >= 7);
  for (let i = 1; i < all.length; i++) assert.ok(all[i].position.commit > all[i - 1].position.commit);
  const last = await collect(client.readAll({ direction: BACKWARDS, fromPosition: END, maxCount: 1 }));
  assert.equal(last.length, 1);
  assert.equal(last[0].id, all[all.length - 1].id);
  const fromSecond = await collect(client.readAll({ direction: FORWARDS, fromPosition: all[1].position, maxCount: 2 }));
  assert.deepEqual(fromSecond.map((e) => e.id), [all[1].id, all[2].id]);
  // This client's readAll takes no filter (its subscribeToAll does, below); filtered reads
  // of $all are checked with the Rust client.
});

check("subscribe to a stream: catch up, then live events", async () => {
  const subscription = client.subscribeToStream("order-1", { fromRevision: START });
  const caughtUp = until(subscription, (s) => s.caughtUp && s.events.length >= 5);
  const first = await caughtUp;
  assert.deepEqual(first.events.map((e) => e.revision), [0n, 1n, 2n, 3n, 4n]);
  const live = until(subscription, (s) => s.events.length >= 2);
  await client.appendToStream("order-1", [jsonEvent({ type: "Returned", data: {} }), jsonEvent({ type: "Refunded", data: {} })]);
  const after = await live;
  assert.deepEqual(after.events.map((e) => [e.revision, e.type]), [[5n, "Returned"], [6n, "Refunded"]]);
  await subscription.unsubscribe();
  const fromRevision = client.subscribeToStream("order-1", { fromRevision: 4n });
  const tail = await until(fromRevision, (s) => s.caughtUp);
  assert.deepEqual(tail.events.map((e) => e.revision), [5n, 6n]);
  await fromRevision.unsubscribe();
});

check("subscribe to $all with a filter: catch up, checkpoints, then live events", async () => {
  const checkpoints = [];
  const subscription = client.subscribeToAll({
    fromPosition: START,
    filter: eventTypeFilter({
      prefixes: ["Re"],
      maxSearchWindow: 1,
      checkpointInterval: 1,
      checkpointReached: (_s, position) => checkpoints.push(position.commit),
    }),
  });
  const caught = await until(subscription, (s) => s.caughtUp);
  assert.deepEqual(caught.events.map((e) => e.type), ["Returned", "Refunded"]);
  // A window of one: a checkpoint at every event examined, matching or not, then one on
  // catching up at the head (the last event, or past it where positions have holes).
  const log = (await collect(client.readAll({ fromPosition: START }))).map((e) => e.position.commit);
  assert.deepEqual(checkpoints.slice(0, log.length), log);
  assert.equal(checkpoints.length, log.length + 1);
  assert.ok(checkpoints[log.length] >= log[log.length - 1]);
  const live = until(subscription, (s) => s.events.length >= 1);
  await client.appendToStream("order-2", [jsonEvent({ type: "Ignored", data: {} }), jsonEvent({ type: "Reordered", data: {} })]);
  const after = await live;
  assert.deepEqual(after.events.map((e) => [e.streamId, e.type]), [["order-2", "Reordered"]]);
  await subscription.unsubscribe();
  const unfiltered = client.subscribeToAll({ fromPosition: END });
  const next = until(unfiltered, (s) => s.events.length >= 1);
  await new Promise((resolve) => unfiltered.once("confirmation", resolve));
  await client.appendToStream("order-3", jsonEvent({ type: "Placed", data: {} }));
  assert.deepEqual((await next).events.map((e) => e.streamId), ["order-3"]);
  await unfiltered.unsubscribe();
});

check("delete: the stream reads as not found until an append recreates it", async () => {
  await client.appendToStream("cart-1", [jsonEvent({ type: "Added", data: {} }), jsonEvent({ type: "Added", data: {} })]);
  await rejects(client.deleteStream("cart-1", { expectedRevision: 0n }), WrongExpectedVersionError);
  await client.deleteStream("cart-1", { expectedRevision: 1n });
  await rejects(collect(client.readStream("cart-1")), StreamNotFoundError);
  const r = await client.appendToStream("cart-1", jsonEvent({ type: "Added", data: {} }), { expectedRevision: NO_STREAM });
  assert.equal(r.nextExpectedRevision, 2n);
  const events = await collect(client.readStream("cart-1"));
  assert.deepEqual(events.map((e) => e.revision), [2n]);
});

check("tombstone: the stream is gone for good", async () => {
  await client.appendToStream("cart-2", jsonEvent({ type: "Added", data: {} }));
  await client.tombstoneStream("cart-2", { expectedRevision: ANY });
  await rejects(collect(client.readStream("cart-2")), StreamDeletedError);
  await rejects(client.appendToStream("cart-2", jsonEvent({ type: "Added", data: {} })), StreamDeletedError);
  await rejects(client.tombstoneStream("cart-2"), StreamDeletedError);
});

check("events written through the Sirenia library read back as written", async () => {
  const fixture = JSON.parse(readFileSync(fixturePath, "utf8"));
  const events = await collect(client.readStream(fixture.stream));
  assert.equal(events.length, fixture.events.length);
  fixture.events.forEach((expected, i) => {
    const e = events[i];
    assert.equal(e.id, expected.id);
    assert.equal(e.type, expected.type);
    assert.equal(e.revision, BigInt(i));
    assert.deepEqual(e.data, expected.data);
    assert.deepEqual(e.metadata, expected.metadata);
  });
});

check("events written here are left for the Sirenia library to read", async () => {
  const written = [
    { id: randomUUID(), type: "Opened", data: { owner: "ada", limit: 100 }, metadata: { $correlationId: "node-corr", source: "node" } },
    { id: randomUUID(), type: "Deposited", data: { amount: 42 }, metadata: { $causationId: "node-cause" } },
  ];
  await client.appendToStream("fromnode-1", written.map((e) => jsonEvent(e)), { expectedRevision: NO_STREAM });
  writeFileSync(outputPath, JSON.stringify({ stream: "fromnode-1", events: written }));
});

let failed = 0;
for (const [name, fn] of checks) {
  try {
    await fn();
    console.log(`ok ${name}`);
  } catch (error) {
    failed += 1;
    console.log(`FAILED ${name}: ${error?.stack ?? error}`);
  }
}
await client.dispose();
console.log(`${checks.length - failed} of ${checks.length} checks passed`);
process.exit(failed === 0 ? 0 : 1);
