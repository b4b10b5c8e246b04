// Load generator for run.py: node loadgen.js PHASE URL 'JSON options'.
//
// Talks to run.py over stdio: "MARK <name>" means "read the server's /proc
// now"; the generator then waits for a line on stdin, so nothing is sent while
// run.py samples. The last line is "RESULT <json>". Written in Node because
// socket.io-client is the reference client and one Node core drives more acks
// per second than any of the Python servers can answer (see docs/benchmarks.md).
"use strict";

const readline = require("node:readline");
const { io } = require("socket.io-client");

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function mark(name) {
  process.stdout.write(`MARK ${name}\n`);
  const { done } = await lines.next();
  if (done) process.exit(3); // run.py went away: nothing left to report to
}

function result(data) {
  process.stdout.write(`RESULT ${JSON.stringify(data)}\n`);
}

function connect(url) {
  // forceNew: one Engine.IO connection per client, as separate users would have.
  const socket = io(url, { transports: ["websocket"], forceNew: true, reconnection: false, timeout: 30000 });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => reject(new Error(`connect failed: ${err.message}`)));
  });
}

async function connectMany(url, count, inFlight) {
  // Bounded concurrency: a burst of 1,000 handshakes would measure the listen
  // backlog, not the server.
  const sockets = [];
  for (let i = 0; i < count; i += inFlight) {
    const batch = Array.from({ length: Math.min(inFlight, count - i) }, () => connect(url));
    sockets.push(...(await Promise.all(batch)));
  }
  return sockets;
}

async function closeAll(sockets) {
  // Each close sends a close frame; give the handshakes a moment to finish
  // before exiting, as a real client would, so a server is not charged with
  // hundreds of dropped connections at once.
  sockets.forEach((s) => s.close());
  await new Promise((r) => setTimeout(r, 300));
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function latency(url, opts) {
  const socket = await connect(url);
  const payload = "x".repeat(opts.payload);
  for (let i = 0; i < opts.warmup; i++) await socket.emitWithAck("echo", payload);
  const micros = [];
  for (let i = 0; i < opts.count; i++) {
    const start = process.hrtime.bigint();
    const answer = await socket.emitWithAck("echo", payload);
    micros.push(Number(process.hrtime.bigint() - start) / 1000);
    if (answer !== payload) throw new Error("echo returned something else");
  }
  micros.sort((a, b) => a - b);
  await closeAll([socket]);
  result({ p50_us: percentile(micros, 50), p99_us: percentile(micros, 99), count: micros.length });
}

async function throughput(url, opts) {
  const sockets = await connectMany(url, opts.clients, 50);
  const payload = "x".repeat(opts.payload);
  let acks = 0;
  let running = true;
  const loop = async (socket) => {
    while (running) {
      await socket.emitWithAck("echo", payload);
      acks++;
    }
  };
  const loops = sockets.map(loop);
  await new Promise((r) => setTimeout(r, opts.warmup_s * 1000));
  await mark("start");
  acks = 0;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await new Promise((r) => setTimeout(r, opts.seconds * 1000));
  const counted = acks;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  await mark("stop");
  running = false;
  await Promise.all(loops);
  await closeAll(sockets);
  result({ acks: counted, seconds, loadgen_cpu_s: (cpu.user + cpu.system) / 1e6 });
}

async function idle(url, opts) {
  // One connection first, so the baseline includes whatever a server sets up
  // lazily on its first client rather than charging it to the 1,000.
  const first = await connect(url);
  await first.emitWithAck("echo", "warm");
  await new Promise((r) => setTimeout(r, 300));
  await mark("before");
  const sockets = await connectMany(url, opts.connections, 50);
  await new Promise((r) => setTimeout(r, opts.settle_s * 1000));
  await mark("after");
  await closeAll([first, ...sockets]);
  result({ connections: sockets.length });
}

async function big(url, opts) {
  const socket = await connect(url);
  await socket.emitWithAck("echo", "warm");
  const payload = "y".repeat(opts.bytes);
  await mark("before");
  const start = process.hrtime.bigint();
  const answer = await socket.emitWithAck("echo", payload);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (answer !== payload) throw new Error("big echo returned something else");
  await mark("after");
  await closeAll([socket]);
  result({ seconds, bytes: opts.bytes });
}

const PHASES = { latency, throughput, idle, big };

async function main() {
  const [phase, url, json] = process.argv.slice(2);
  if (!PHASES[phase]) throw new Error(`unknown phase ${phase}`);
  await PHASES[phase](url, JSON.parse(json || "{}"));
  process.exit(0); // lingering sockets must not keep the process alive
}

main().catch((err) => {
  process.stderr.write(`loadgen: ${err.message}\n`);
  process.exit(1);
});
