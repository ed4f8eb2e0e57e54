// The Node.js side of benchmark S14: the official EventStoreDB client against `sirenia serve`.
//
// node bench.mjs append URL WRITERS MILLISECONDS   single-event appends, WRITERS concurrent loops
// node bench.mjs read-stream URL STREAM            read one stream forwards, whole
// node bench.mjs read-all URL                      read $all forwards, whole
//
// Prints one JSON line: {"events", "seconds", "p50_us", "p99_us", "p999_us"}.
import { ANY, EventStoreDBClient, FORWARDS, START, jsonEvent } from "@eventstore/db-client";

const PAYLOAD = { account: "acc-0001", amount: 1250, currency: "EUR", note: "benchmark" };
const [mode, url, a, b] = process.argv.slice(2);
const client = EventStoreDBClient.connectionString(url);

const quantile = (sorted, q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : 0);
const report = (events, seconds, latencies) => {
  const sorted = Float64Array.from(latencies).sort();
  const us = (q) => Math.round(quantile(sorted, q));
  console.log(JSON.stringify({ events, seconds, p50_us: us(0.5), p99_us: us(0.99), p999_us: us(0.999) }));
};

if (mode === "append") {
  const writers = Number(a);
  const millis = Number(b);
  const append = (w, n) =>
    client.appendToStream(`node-${w}-${n % 100}`, jsonEvent({ type: "MoneyDeposited", data: PAYLOAD }), { expectedRevision: ANY });
  // One append per writer before the clock starts (connection, server features).
  await Promise.all(Array.from({ length: writers }, (_, w) => append(w, 0)));
  const latencies = [];
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(millis) * 1_000_000n;
  let events = 0;
  await Promise.all(
    Array.from({ length: writers }, async (_, w) => {
      for (let n = 1; process.hrtime.bigint() < deadline; n++) {
        const t = process.hrtime.bigint();
        await append(w, n);
        latencies.push(Number(process.hrtime.bigint() - t) / 1000);
        events += 1;
      }
    }),
  );
  report(events, Number(process.hrtime.bigint() - start) / 1e9, latencies);
} else if (mode === "read-stream" || mode === "read-all") {
  const start = process.hrtime.bigint();
  const reads =
    mode === "read-stream"
      ? client.readStream(a, { direction: FORWARDS, fromRevision: START })
      : client.readAll({ direction: FORWARDS, fromPosition: START });
  let events = 0;
  for await (const resolved of reads) {
    if (resolved.event) events += 1;
  }
  report(events, Number(process.hrtime.bigint() - start) / 1e9, []);
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
await client.dispose();
