// The chat page in a real browser (Debian's Chromium, driven by Playwright)
// against real roomcast processes: two pages on different nodes of one Redis
// chat, see presence and typing; then the node under one page is killed, the
// page shows "reconnecting", comes back through another node (via nginx),
// and shows every message sent meanwhile exactly once; one socket carries
// two rooms, with unread counts, online status, and a direct message from
// the application. Screenshots go to tests/artifacts/.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { freePort, launchChromium, root, run, startEdge as start, waitHttp } from "./harness.mjs";

const artifacts = path.join(root, "tests/artifacts");
mkdirSync(artifacts, { recursive: true });

const KEY = "browser-chat-server-key";
const startEdge = (port, id, redisUrl) => start(port, { NODE_ID: id, REDIS_URL: redisUrl, SERVER_API_KEY: KEY });

async function startNginx(upstreams) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), "roomcast-browser-nginx-"));
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

async function join(page, base, name, roomName, create) {
  await page.goto(base + "/");
  await page.getByTestId("username").fill(name);
  await page.getByTestId("save-user").click();
  await page.locator("#me", { hasText: name }).waitFor();
  if (create) {
    await page.getByTestId("room-name").fill(roomName);
    await page.getByTestId("create-room").click();
  } else {
    await page.locator('[data-testid="room"]', { hasText: `# ${roomName}` }).click();
  }
  await page.locator('[data-testid="state"]', { hasText: "connected" }).waitFor();
}

async function say(page, text) {
  await page.getByTestId("text").fill(text);
  await page.getByTestId("text").press("Enter");
}

const shown = (page, text) =>
  page.locator('[data-testid="message"] .content', { hasText: new RegExp(`^${text}$`) });

// A page shows a message (its own too) when the server's copy arrives, and
// the two pages get theirs through different nodes in no fixed order: wait
// for it on this page before counting, then it must be there exactly once.
async function shownOnce(page, text, who) {
  await shown(page, text).first().waitFor();
  assert.equal(await shown(page, text).count(), 1, `"${text}" shown exactly once on page ${who}`);
}

test("two pages on two nodes chat, and one survives the loss of its node", async () => {
  const redisPort = await freePort();
  const redisDir = mkdtempSync(path.join(os.tmpdir(), "roomcast-browser-redis-"));
  run("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", redisDir]);
  const redisUrl = `redis://127.0.0.1:${redisPort}/0`;
  await new Promise((r) => setTimeout(r, 300));

  const ports = [await freePort(), await freePort(), await freePort()];
  const ids = ["node-a", "node-b", "node-c"];
  const edges = [];
  for (let i = 0; i < 3; i++) edges.push(await startEdge(ports[i], ids[i], redisUrl));
  // Page A talks to node-a directly; page B goes through nginx to node-b or node-c.
  const lb = await startNginx([ports[1], ports[2]]);

  const browser = await launchChromium();
  try {
    const a = await (await browser.newContext()).newPage();
    const b = await (await browser.newContext()).newPage();
    await join(a, `http://127.0.0.1:${ports[0]}`, "alice", "lobby", true);
    await join(b, `http://127.0.0.1:${lb}`, "bob", "lobby", false);

    // Presence both ways.
    await a.locator("#online li", { hasText: "bob" }).waitFor();
    await b.locator("#online li", { hasText: "alice" }).waitFor();
    // Typing reaches the other page.
    await a.getByTestId("text").pressSequentially("hel");
    await b.locator('[data-testid="typing"]', { hasText: "alice is typing" }).waitFor();
    await a.getByTestId("text").fill("");
    await say(a, "hello bob");
    await shown(b, "hello bob").waitFor();
    await say(b, "hi alice");
    await shown(a, "hi alice").waitFor();
    await a.screenshot({ path: path.join(artifacts, "browser-1-page-a.png") });
    await b.screenshot({ path: path.join(artifacts, "browser-1-page-b.png") });

    // Kill the node under page B.
    const nodeText = await b.getByTestId("node").textContent();
    const victim = ids.findIndex((id) => nodeText.includes(id));
    assert.ok(victim === 1 || victim === 2, `page B is on ${nodeText}`);
    const before = await b.evaluate(() => window.__roomcast.states.length);
    edges[victim].kill("SIGKILL");
    for (let i = 1; i <= 3; i++) await say(a, `while away ${i}`);
    await b.locator('[data-testid="state"]', { hasText: "connected" }).waitFor();
    await b.waitForFunction(
      ([n, gone]) => {
        const s = window.__roomcast.states.slice(n);
        return s.includes("reconnecting") && s.at(-1) === "connected" && !document.querySelector('[data-testid="node"]').textContent.includes(gone);
      },
      [before, ids[victim]],
    );
    const states = await b.evaluate((n) => window.__roomcast.states.slice(n), before);
    assert.ok(states.includes("reconnecting"), `page B showed reconnecting: ${states}`);
    const newNode = await b.getByTestId("node").textContent();
    assert.ok(!newNode.includes(ids[victim]), `page B came back through another node (${newNode})`);

    for (const text of ["hello bob", "hi alice", "while away 1", "while away 2", "while away 3"]) {
      await shownOnce(b, text, "B");
      await shownOnce(a, text, "A");
    }
    await b.screenshot({ path: path.join(artifacts, "browser-2-page-b-after-node-loss.png") });

    // The node comes back; the chat goes on.
    edges[victim] = await startEdge(ports[victim], ids[victim], redisUrl);
    await say(b, "back to normal");
    await shownOnce(a, "back to normal", "A");
    await shownOnce(b, "back to normal", "B");
    await a.screenshot({ path: path.join(artifacts, "browser-3-page-a.png") });

    // One socket, two rooms: bob opens a second room; what alice says in
    // the lobby meanwhile shows as unread there, until bob goes back.
    await b.getByTestId("room-name").fill("side");
    await b.getByTestId("create-room").click();
    await b.locator("#messages li.system", { hasText: "#side" }).waitFor();
    await say(a, "unread one");
    await say(a, "unread two");
    const lobbyButton = b.locator('[data-testid="room"]', { hasText: "# lobby" });
    await lobbyButton.locator('[data-testid="unread"]', { hasText: /^2$/ }).waitFor();
    assert.equal(await shown(b, "unread one").count(), 0, "not shown in the side room");
    await lobbyButton.click();
    await shownOnce(b, "unread two", "B");
    assert.equal(await lobbyButton.locator('[data-testid="unread"]').count(), 0, "read now");
    // Alice follows bob's status (met in the lobby): online.
    await a.locator('#people li[data-online="true"]', { hasText: "bob" }).waitFor();
    // The application's backend sends bob a direct message: it reaches his
    // page through his one socket, wherever it is.
    const bobId = await b.evaluate(() => JSON.parse(localStorage.getItem("roomcast.user")).id);
    const dm = await fetch(`http://127.0.0.1:${ports[0]}/users/${bobId}/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` },
      body: JSON.stringify({ data: { from: "alice", text: "a word in private" } }),
    });
    assert.equal(dm.status, 202);
    await b.locator('[data-testid="direct-message"]', { hasText: "a word in private" }).waitFor();
    await b.screenshot({ path: path.join(artifacts, "browser-4-page-b-two-rooms.png") });
  } finally {
    await browser.close();
  }
});
