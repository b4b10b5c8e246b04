// The official socket.io-client as a test peer for our trio Socket.IO server.
//
//   node client.mjs --url http://127.0.0.1:PORT --scenario NAME
//                   [--namespace /] [--transports polling,websocket] [--auth JSON] [--timeout-ms 10000]
//
// Prints one JSON line per step on stdout ({"step": ..., ...}); binary values are
// printed as {"$bin": "<hex>"} and --auth may use the same form. Exits 0 once the
// scenario is over and every connection is closed, 1 (error on stderr) otherwise.
// DEBUG=socket.io-client*,engine.io-client* shows the client's own trace on stderr.
//
// Scenarios (tests/socketio/test_js_client.py holds the server's side):
//   exchange           connect with auth, wait for the final transport, then:
//                      emit "echo" with several arguments (one binary) and an ack callback,
//                      emitWithAck("echo", "solo"), emit "report" (several arguments, binary),
//                      then print the server's "hello" events and answer its "ask" calls
//                      until the server disconnects us.
//   client-disconnect  connect, wait for the final transport, disconnect.
//   connect-error      connect and expect connect_error; print its message and data.

import { parseArgs } from "node:util";
import { io } from "socket.io-client";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    scenario: { type: "string" },
    namespace: { type: "string", default: "/" },
    transports: { type: "string", default: "polling,websocket" },
    auth: { type: "string", default: "null" },
    "timeout-ms": { type: "string", default: "10000" },
  },
});
if (!opts.url || !opts.scenario) {
  fail(new Error("--url and --scenario are required"));
}

function fail(error) {
  process.stderr.write(`client.mjs (${opts.scenario}): ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
}

// Stop a hung scenario, but never keep an otherwise finished process alive.
setTimeout(() => fail(new Error(`scenario still running after ${opts["timeout-ms"]} ms`)), Number(opts["timeout-ms"])).unref();

function toPrintable(value) {
  if (Buffer.isBuffer(value)) return { $bin: value.toString("hex") };
  if (value instanceof ArrayBuffer) return { $bin: Buffer.from(value).toString("hex") };
  if (ArrayBuffer.isView(value)) return { $bin: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("hex") };
  if (Array.isArray(value)) return value.map(toPrintable);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toPrintable(v)]));
  }
  return value;
}

function fromPrintable(value) {
  if (Array.isArray(value)) return value.map(fromPrintable);
  if (value !== null && typeof value === "object") {
    if (typeof value.$bin === "string" && Object.keys(value).length === 1) return Buffer.from(value.$bin, "hex");
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fromPrintable(v)]));
  }
  return value;
}

function print(step, fields = {}) {
  process.stdout.write(JSON.stringify({ step, ...toPrintable(fields) }) + "\n");
}

const transports = opts.transports.split(",");
const auth = fromPrintable(JSON.parse(opts.auth));
const socket = io(opts.url + (opts.namespace === "/" ? "" : opts.namespace), {
  transports,
  ...(auth === null ? {} : { auth }),
  forceNew: true,
  reconnection: false,
});
const engine = socket.io.engine;
const initialTransport = engine.transport.name;

function once(emitter, event) {
  return new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));
}

function connected() {
  return new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", (err) => reject(new Error(`connect_error: ${err.message} ${JSON.stringify(err.data)}`)));
  });
}

// Resolves once the engine is on its final transport: at once on WebSocket, else after the upgrade.
function finalTransport() {
  if (engine.transport.name === "websocket" || !transports.includes("websocket")) {
    return Promise.resolve(engine.transport.name);
  }
  return new Promise((resolve, reject) => {
    engine.once("upgrade", (transport) => resolve(transport.name));
    engine.once("upgradeError", (err) => reject(new Error(`upgrade failed: ${err.message}`)));
  });
}

async function connectAndSettle() {
  await connected();
  print("connect", { id: socket.id, initial: initialTransport, transport: engine.transport.name });
  print("transport", { name: await finalTransport() });
}

const scenarios = {
  async exchange() {
    const disconnected = once(socket, "disconnect");
    socket.on("hello", (...args) => print("hello", { args, transport: engine.transport.name }));
    socket.on("ask", (...args) => {
      const ack = args.pop();
      print("ask", { args });
      ack("answer", args, Buffer.from([0xca, 0xfe]));
    });
    await connectAndSettle();

    const echoed = await new Promise((resolve) => {
      socket.emit("echo", 1, "two", { three: [3, null, true] }, Buffer.from([0, 1, 2, 255]), (...args) => resolve(args));
    });
    print("echo", { args: echoed });
    print("emitWithAck", { value: await socket.emitWithAck("echo", "solo") });
    socket.emit("report", "text", 42, { nested: Buffer.from("bin") }, Buffer.alloc(0));
    print("report");

    const [reason] = await disconnected;
    print("disconnect", { reason, transport: engine.transport.name });
  },

  async "client-disconnect"() {
    await connectAndSettle();
    const disconnected = once(socket, "disconnect");
    socket.disconnect();
    const [reason] = await disconnected;
    print("disconnect", { reason, connected: socket.connected });
  },

  async "connect-error"() {
    const [err] = await new Promise((resolve, reject) => {
      socket.once("connect_error", (...args) => resolve(args));
      socket.once("connect", () => reject(new Error("connected, but a connect_error was expected")));
    });
    print("connect_error", { message: err.message, data: err.data ?? null, active: socket.active });
    socket.disconnect(); // closes the Engine.IO connection: no socket of this manager is left
  },
};

const scenario = scenarios[opts.scenario];
if (!scenario) fail(new Error(`unknown scenario ${opts.scenario}`));
scenario().catch(fail);
