// The /client.js module's contract, in Chromium against one embedded node:
// sends resolve on ack and reject with the server's error code, fatal close
// codes stop reconnecting, 1012 reconnects at once and resumes with since.
import { test } from "node:test";
import assert from "node:assert/strict";
import { freePort, launchChromium, startEdge } from "./harness.mjs";

test("client.js: acks, errors, fatal closes and drains", async () => {
  const port = await freePort();
  let edge = await startEdge(port);
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${port}/`);
    const result = await page.evaluate(async () => {
      const { RoomcastClient, SendError } = await import("/client.js");
      const post = (p, b) => fetch(p, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(b) }).then((r) => r.json());
      const user = await post("/users", { username: "tester" });
      const room = await post("/rooms", { name: "api" });
      const out = {};

      // Unknown room: 4004 is final, no reconnect attempts.
      const lost = new RoomcastClient({ room: "no-such-room", user: user.id });
      const lostStates = [];
      lost.addEventListener("state", (e) => lostStates.push(e.detail.state));
      lost.connect();
      await new Promise((r) => setTimeout(r, 1500));
      out.lostStates = lostStates;

      const c = new RoomcastClient({ room: room.id, user: user.id });
      const resets = [];
      c.addEventListener("reset", (e) => resets.push(e.detail));
      window.__resets = resets;
      const states = [];
      c.addEventListener("state", (e) => states.push(e.detail.state));
      const seen = [];
      c.addEventListener("message", (e) => seen.push(e.detail.offset));
      c.connect();
      out.ack = await c.send("first");
      try {
        await c.send("   ");
        out.empty = "resolved?!";
      } catch (e) {
        out.empty = e instanceof SendError ? e.code : String(e);
      }
      window.__c = c;
      window.__states = states;
      window.__seen = seen;
      return out;
    });
    assert.deepEqual(result.lostStates, ["connecting", "offline"], "4004: no retry");
    assert.equal(result.ack.offset, 1);
    assert.equal(result.empty, "empty_content", "send rejects with the server's code");

    // Drain: 1012, reconnect when the node is back. The embedded backend
    // forgets everything on restart, so this node comes back with
    // auto-create on (production defaults) and a new history epoch.
    edge.kill("SIGTERM");
    await new Promise((r) => edge.on("exit", r));
    edge = await startEdge(port, { ENVIRONMENT: "production", ALLOW_UNAUTHENTICATED: "true" });
    await page.waitForFunction(() => window.__states.at(-1) === "connected" && window.__states.includes("reconnecting"));
    const after = await page.evaluate(async () => {
      const ack = await window.__c.send("after drain");
      await new Promise((r) => setTimeout(r, 200));
      return { ack, seen: window.__seen, states: window.__states, resets: window.__resets };
    });
    // The embedded backend lost its history with the restart (new epoch):
    // offsets start again and the client accepts them after its reset.
    assert.equal(after.ack.offset, 1, JSON.stringify(after));
    assert.ok(after.states.includes("reconnecting"));
    assert.equal(after.resets.length, 1, "the client reported the history reset");
    assert.deepEqual(after.seen, [1, 1], "offset 1 of the old epoch, then offset 1 of the new one");
  } finally {
    await browser.close();
  }
});

test("client.js: throttled typing, and a frozen node is detected by the missing pong", async () => {
  const port = await freePort();
  const edge = await startEdge(port, { ENVIRONMENT: "production", ALLOW_UNAUTHENTICATED: "true" });
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${port}/`);
    const typing = await page.evaluate(async () => {
      const { RoomcastClient } = await import("/client.js");
      const connected = (c) => new Promise((r) => c.addEventListener("state", (e) => e.detail.state === "connected" && r()));
      const typer = new RoomcastClient({ room: "typing-room", user: "typer", typingInterval: 2000, typingIdle: 600 });
      const reader = new RoomcastClient({ room: "typing-room", user: "reader" });
      const seen = [];
      reader.addEventListener("typing", (e) => seen.push(e.detail.is_typing));
      const ready = Promise.all([connected(typer), connected(reader)]);
      typer.connect();
      reader.connect();
      await ready;
      // Ten keystrokes in half a second: one `typing: true`, then `false` after the idle time.
      for (let i = 0; i < 10; i++) {
        typer.typing(true);
        await new Promise((r) => setTimeout(r, 50));
      }
      await new Promise((r) => setTimeout(r, 1200));
      typer.stop();
      reader.stop();
      return seen;
    });
    assert.deepEqual(typing, [true, false], "throttled to one start and one stop");

    await page.evaluate(async () => {
      const { RoomcastClient } = await import("/client.js");
      const c = new RoomcastClient({ room: "pong-room", user: "pinger", pingInterval: 200, pongTimeout: 500 });
      window.__pong = { states: [] };
      c.addEventListener("state", (e) => window.__pong.states.push(e.detail.state));
      c.connect();
      await new Promise((r) => c.addEventListener("state", (e) => e.detail.state === "connected" && r()));
    });
    // Freeze the node: the TCP connection stays open, but nothing answers.
    edge.kill("SIGSTOP");
    await page.waitForFunction(() => window.__pong.states.includes("reconnecting"), null, { timeout: 5000 });
    edge.kill("SIGCONT");
    await page.waitForFunction(() => window.__pong.states.at(-1) === "connected" && window.__pong.states.filter((s) => s === "connected").length === 2, null, { timeout: 15000 });
  } finally {
    await browser.close();
  }
});

test("client.js: resumes an empty room with since=0, and resends an unacknowledged send once", async () => {
  const port = await freePort();
  await startEdge(port, { ENVIRONMENT: "production", ALLOW_UNAUTHENTICATED: "true" });
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${port}/`);
    const out = await page.evaluate(async () => {
      const { RoomcastClient } = await import("/client.js");
      // The next time `c` is connected.
      const connected = (c) => new Promise((r) => {
        const on = (e) => e.detail.state === "connected" && (c.removeEventListener("state", on), r());
        c.addEventListener("state", on);
      });
      // A room with no message yet: the reader's position is offset 0.
      const reader = new RoomcastClient({ room: "empty-room", user: "reader", backoff: { initial: 1500, jitter: 0 } });
      const seen = [];
      reader.addEventListener("message", (e) => seen.push(e.detail.content));
      const first = connected(reader);
      reader.connect();
      await first;
      // Its connection drops; while it waits to reconnect, someone posts.
      const again = connected(reader);
      reader._ws.close(4000, "test drop");
      const poster = new RoomcastClient({ room: "empty-room", user: "poster" });
      const up = connected(poster);
      poster.connect();
      await up;
      await poster.send("while you were away");
      await again;
      await new Promise((r) => setTimeout(r, 300));

      // A send whose connection drops before its ack: sent again with the
      // same client_id once the connection is back, stored once.
      const back = connected(poster);
      const pending = poster.send("sent as the line dropped", "drop-1");
      poster._ws.close(4000, "test drop");
      await back;
      const ack = await pending;
      const history = await fetch("/rooms/empty-room/messages?limit=50").then((r) => r.json());
      reader.stop();
      poster.stop();
      return { seen, ack, contents: history.map((m) => m.content) };
    });
    assert.deepEqual(out.seen.slice(0, 1), ["while you were away"], "missed while away: since=0 resumed it");
    assert.deepEqual(out.contents, ["while you were away", "sent as the line dropped"], "stored once");
    assert.equal(out.ack.offset, 2);
  } finally {
    await browser.close();
  }
});
