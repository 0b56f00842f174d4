// /session.js, the multiplexed client, in Chromium against three nodes on one
// Redis: two users on one socket each share three rooms (one of them through
// nginx), follow each other's status, get a message from the application,
// count unread messages per room, and one survives the loss of its node,
// resuming every room with no gap and no duplicate.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { freePort, launchChromium, root, run, startEdge, waitHttp } from "./harness.mjs";

const KEY = "browser-test-server-key";

async function startNginx(upstreams) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), "roomcast-session-nginx-"));
  const conf = readFileSync(path.join(root, "deploy/nginx.conf"), "utf8");
  const servers = upstreams.map((p) => `        server 127.0.0.1:${p} max_fails=0;`).join("\n");
  const rendered = conf
    .replace(/^\s*server edge1:8000.*$/m, servers)
    .replace(/^\s*server edge\d:8000.*$\n?/gm, "")
    .replace("listen 80;", `listen 127.0.0.1:${port};`);
  writeFileSync(path.join(dir, "nginx.conf"), rendered);
  run("nginx", ["-p", dir, "-c", path.join(dir, "nginx.conf"), "-g", `daemon off; pid ${dir}/nginx.pid; error_log ${dir}/error.log;`]);
  await waitHttp(`http://127.0.0.1:${port}/health`);
  return port;
}

/** Opens a session for `user` in `page` (kept in window.__s), subscribed to `rooms`. */
async function open(page, base, user, rooms) {
  await page.goto(base + "/");
  await page.evaluate(async ([user, rooms]) => {
    const { RoomcastSession } = await import("/session.js");
    const s = new RoomcastSession({ user, username: user.toUpperCase() });
    const log = { messages: {}, statuses: [], dms: [], states: [] };
    s.addEventListener("message", (e) => (log.messages[e.detail.room_id] ??= []).push([e.detail.offset, e.detail.content]));
    s.addEventListener("status", (e) => log.statuses.push([e.detail.user_id, e.detail.online]));
    s.addEventListener("user_message", (e) => log.dms.push(e.detail.data));
    s.addEventListener("state", (e) => log.states.push(e.detail.state));
    s.addEventListener("connected", (e) => (log.node = e.detail.node_id));
    window.__s = s;
    window.__log = log;
    s.connect();
    await new Promise((r) => s.addEventListener("state", (e) => e.detail.state === "connected" && r()));
    for (const room of rooms) await s.subscribe(room);
  }, [user, rooms]);
}

test("session.js: many rooms on one socket, status, a message to the user, and a node loss", async () => {
  const redisPort = await freePort();
  const redisDir = mkdtempSync(path.join(os.tmpdir(), "roomcast-session-redis-"));
  run("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", redisDir]);
  const env = (id) => ({
    NODE_ID: id,
    REDIS_URL: `redis://127.0.0.1:${redisPort}/0`,
    ALLOW_WEBSOCKET_AUTO_ROOMS: "true",
    ALLOW_JOIN_AUTO_USERS: "true",
    SERVER_API_KEY: KEY,
  });
  const ports = [await freePort(), await freePort(), await freePort()];
  const ids = ["node-a", "node-b", "node-c"];
  const edges = [];
  for (let i = 0; i < 3; i++) edges.push(await startEdge(ports[i], env(ids[i])));
  const lb = await startNginx([ports[1], ports[2]]);
  const rooms = ["general", "random", "support-1"];

  const browser = await launchChromium();
  try {
    const a = await (await browser.newContext()).newPage();
    const b = await (await browser.newContext()).newPage();
    await open(a, `http://127.0.0.1:${ports[0]}`, "alice", rooms);
    await a.evaluate(() => window.__s.watch(["bob"]));
    await a.waitForFunction(() => window.__log.statuses.length === 1);
    await open(b, `http://127.0.0.1:${lb}`, "bob", rooms);
    await a.waitForFunction(() => JSON.stringify(window.__log.statuses) === '[["bob",false],["bob",true]]');

    // Alice writes in two rooms: bob has them, unread per room.
    await a.evaluate(async () => {
      await window.__s.send("general", "hi all");
      await window.__s.send("random", "anyone?");
      await window.__s.send("general", "hello?");
    });
    await b.waitForFunction(() => Object.values(window.__log.messages).flat().length === 3);
    const unread = await b.evaluate(() => Object.fromEntries([...window.__s.rooms].map(([r, v]) => [r, v.unread])));
    assert.deepEqual(unread, { general: 2, random: 1, "support-1": 0 });

    // The application sends bob a direct message (not stored, to his socket).
    const dm = await fetch(`http://127.0.0.1:${ports[0]}/users/bob/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` },
      body: JSON.stringify({ data: { kind: "dm", from: "alice", text: "psst" } }),
    });
    assert.equal(dm.status, 202);
    await b.waitForFunction(() => window.__log.dms.length === 1);
    assert.deepEqual(await b.evaluate(() => window.__log.dms[0]), { kind: "dm", from: "alice", text: "psst" });

    // Bob's node dies; alice writes in every room meanwhile; bob comes back
    // through the other node and has everything once, in order, per room.
    const victim = ids.indexOf(await b.evaluate(() => window.__log.node));
    assert.ok(victim === 1 || victim === 2, `bob is on ${victim}`);
    edges[victim].kill("SIGKILL");
    await a.evaluate(async (rooms) => {
      for (const r of rooms) await window.__s.send(r, `while away in ${r}`);
    }, rooms);
    await b.waitForFunction(
      (gone) => window.__log.states.includes("reconnecting") && window.__s.state === "connected" && window.__log.node !== gone,
      ids[victim],
      { timeout: 20000 },
    );
    await b.waitForFunction(() => Object.values(window.__log.messages).flat().length === 6, null, { timeout: 20000 });
    await a.evaluate(() => window.__s.send("support-1", "back?"));
    await b.waitForFunction(() => (window.__log.messages["support-1"] ?? []).length === 2);
    const seen = await b.evaluate(() => window.__log.messages);
    assert.deepEqual(seen, {
      general: [[1, "hi all"], [2, "hello?"], [3, "while away in general"]],
      random: [[1, "anyone?"], [2, "while away in random"]],
      "support-1": [[1, "while away in support-1"], [2, "back?"]],
    });
  } finally {
    await browser.close();
  }
});
