// What the browser tests share: processes started (and killed at the end of
// the test file), free ports, waiting for HTTP, edge nodes, and Chromium.
import { after } from "node:test";
import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const bin = (name) => path.join(process.env.ROOMCAST_BIN_DIR ?? path.join(root, "target/debug"), name);

const children = [];
after(() => children.forEach((c) => c.exitCode === null && c.kill("SIGKILL")));

export function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Starts a process (killed when the test file ends). */
export function run(cmd, args, env = {}) {
  const child = spawn(cmd, args, { env: { PATH: process.env.PATH, RUST_LOG: "warn", ...env }, stdio: ["ignore", "ignore", "inherit"] });
  children.push(child);
  return child;
}

export async function waitHttp(url, status = 200, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      if ((await fetch(url)).status === status) return;
    } catch {}
    if (Date.now() > deadline) throw new Error(`${url} did not answer ${status}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Starts roomcast-edge on `port` with `env` and waits until it is ready. */
export async function startEdge(port, env = {}) {
  const child = run(bin("roomcast-edge"), [], { PORT: String(port), HOST: "127.0.0.1", ...env });
  await waitHttp(`http://127.0.0.1:${port}/ready`);
  return child;
}

/** Debian's Chromium, headless, without the background traffic a closed network refuses. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
}
