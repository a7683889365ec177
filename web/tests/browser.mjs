// Loads one page in headless Chromium (WebGPU on its SwiftShader adapter) and waits until the page sets
// its title to "done" or "error: ...". Prints one JSON line: {title, ids, stats, console}.
// With --shaders FILE (a JSON list of [label, wgsl]), compiles each module on the page's WebGPU device
// instead and prints {title, errors: [[label, message]...]}.
// With --chat TEXT, uses the page as a person would: Load, type TEXT, Send, and Stop once the first token
// is shown; prints {title, answer, stats, stopped_after_ms}.
// Usage: node browser.mjs [--no-webgpu | --shaders FILE | --chat TEXT] URL [timeout_seconds]
import { chromium } from "playwright-core";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const argv = process.argv.slice(2);
let shaders = null;
let chat = null;
if (argv[0] === "--chat") {
  chat = argv[1];
  argv.splice(0, 2);
}
// --no-webgpu: a browser without WebGPU, to see the page say so.
const noWebgpu = argv[0] === "--no-webgpu";
if (noWebgpu) argv.splice(0, 1);
if (argv[0] === "--shaders") {
  shaders = JSON.parse(readFileSync(argv[1], "utf8"));
  argv.splice(0, 2);
}
const [url, timeoutArg] = argv;
if (!url) {
  console.error("usage: node browser.mjs URL [timeout_seconds]");
  process.exit(2);
}
const timeout = 1000 * Number(timeoutArg || 300);
const profile = mkdtempSync(join(tmpdir(), "herd-chromium-"));
const args = [
  "--headless=new", "--no-sandbox", ...(noWebgpu ? ["--disable-gpu", "--disable-webgpu"] : ["--enable-unsafe-webgpu"]),
  "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  `--user-data-dir=${profile}`, "--remote-debugging-pipe",
];
const messages = [];
let browser;
try {
  browser = await chromium.launch({
    executablePath: process.env.HERD_CHROMIUM || "/usr/bin/chromium",
    ignoreDefaultArgs: true,
    args,
    timeout: 60000,
  });
  const page = browser.contexts()[0] ? await browser.contexts()[0].newPage() : await browser.newPage();
  page.on("console", (m) => messages.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => messages.push(`pageerror: ${e.message}`));
  await page.goto(url, { timeout: 60000 });
  if (chat !== null) {
    await page.click("#load");
    await page.waitForFunction(() => document.getElementById("phase").textContent === "ready" ||
      document.title.startsWith("error:"), null, { timeout, polling: 100 });
    await page.fill("#prompt", chat);
    await page.click("#send");
    const t0 = Date.now();
    // The first piece of the answer, then Stop.
    await page.waitForFunction(() => document.querySelector("#log .assistant")?.textContent.length > 0 ||
      document.querySelector("#log .error"), null, { timeout, polling: 20 });
    await page.click("#stop");
    const stoppedAfter = Date.now() - t0;
    await page.waitForFunction(() => !document.getElementById("send").disabled, null, { timeout, polling: 50 });
    const out = await page.evaluate(() => ({
      title: document.title,
      answer: document.querySelector("#log .assistant")?.textContent ?? "",
      error: document.querySelector("#log .error")?.textContent ?? "",
      stats: document.getElementById("stats").textContent,
      speed: document.getElementById("speed").textContent,
      heatmap: (() => {
        const c = document.getElementById("heatmap");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let painted = 0;
        for (let i = 3; i < d.length; i += 4) painted += d[i] > 0 ? 1 : 0;
        return painted;
      })(),
    }));
    console.log(JSON.stringify({ ...out, stopped_after_ms: stoppedAfter, console: messages.slice(-20) }));
  } else if (shaders) {
    const errors = await page.evaluate(async (list) => {
      const adapter = await navigator.gpu.requestAdapter();
      if (!adapter) return [["adapter", "no WebGPU adapter"]];
      const device = await adapter.requestDevice({ requiredLimits: {
        maxStorageBuffersPerShaderStage: adapter.limits.maxStorageBuffersPerShaderStage,
        maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize,
        maxComputeInvocationsPerWorkgroup: adapter.limits.maxComputeInvocationsPerWorkgroup,
        maxComputeWorkgroupSizeX: adapter.limits.maxComputeWorkgroupSizeX,
      } });
      const out = [];
      for (const [label, code] of list) {
        const m = device.createShaderModule({ label, code });
        const info = await m.getCompilationInfo();
        for (const msg of info.messages) {
          if (msg.type === "error") out.push([label, `${msg.lineNum}:${msg.linePos} ${msg.message}`]);
        }
      }
      return out;
    }, shaders);
    console.log(JSON.stringify({ title: "done", errors, console: messages.slice(-20) }));
    process.exitCode = 0;
  } else {
    await page.waitForFunction(() => document.title === "done" || document.title.startsWith("error:"), null, {
      timeout,
      polling: 200,
    });
    const out = await page.evaluate(() => ({
      title: document.title,
      ids: document.getElementById("ids").textContent,
      stats: document.getElementById("stats").textContent,
      notice: document.getElementById("nogpu").hidden ? "" : document.getElementById("nogpu").textContent,
    }));
    console.log(JSON.stringify({ ...out, console: messages.slice(-20) }));
  }
} catch (e) {
  console.log(JSON.stringify({ title: `harness: ${e.message.split("\n")[0]}`, ids: "", stats: "", console: messages.slice(-20) }));
} finally {
  if (browser) await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
