// The herd demo page: load a model from a URL, chat with it, and watch which expert each MoE layer picks.
//
// Automation hook: ?model=URL&prompt_ids=1,2,3&max_tokens=N&greedy=1[&expert_cache=BYTES] loads the model,
// continues the ids greedily without the chat template, writes the new ids comma-separated into
// <pre id="ids"> (and the statistics into <pre id="stats">), then sets document.title to "done", or to
// "error: <message>" when anything fails. &routing=0 skips reading each layer's picks every step.
// &backend=cpu runs the model on the CPU (WebAssembly) even where WebGPU is there, &backend=webgpu on WebGPU even
// where its adapter is a software fallback; by default a browser without WebGPU, or whose adapter is a software
// fallback, runs it on the CPU, with a notice.
import init, { loadModel } from "./pkg/herd_web.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let herd = null;
let generating = false;

function fail(message) {
  const m = String(message && message.message ? message.message : message).split("\n")[0];
  document.title = "error: " + m;
  return m;
}

function progress(phase, done, total) {
  const names = { gpu: "opening the GPU", config: "reading config.json", tokenizer: "reading the tokenizer",
    index: "reading the index", headers: "reading safetensors headers", weights: "fetching weights",
    upload: "uploading layers", ready: "ready" };
  const frac = total > 0 ? Math.min(1, done / total) : 0;
  $("bar").style.width = (100 * frac).toFixed(1) + "%";
  const bytes = phase === "weights" ? ` (${(done / 1048576).toFixed(1)} of ${(total / 1048576).toFixed(1)} MiB)` : "";
  $("phase").textContent = (names[phase] || phase) + bytes;
}

function showStats() {
  if (!herd) return;
  const s = JSON.parse(herd.stats());
  $("stats").textContent = JSON.stringify(s, null, 1);
  const e = s.experts;
  const parts = [];
  if (s.last && s.last.decode_tok_s !== undefined) {
    parts.push(`prefill ${s.last.prefill_tok_s.toFixed(1)} tok/s`, `decode ${s.last.decode_tok_s.toFixed(1)} tok/s`);
  }
  if (e) parts.push(`expert hit rate ${(100 * e.hit_rate).toFixed(1)}% (${e.fetched} fetched, ${e.slots} slots for ${e.experts} experts)`);
  parts.push(`${(s.fetch.bytes / 1048576).toFixed(2)} MiB over HTTP, ${s.fetch.cache_hits} ranges from the browser cache`);
  if (!s.verified) parts.push("no herd-manifest.json: ranges checked for length and finite values only");
  $("speed").textContent = parts.join(" · ");
}

// The routing picture: one row per MoE layer, one column per token, coloured by the expert chosen first.
const columns = [];
function colour(e, n) {
  return `hsl(${Math.round((360 * e) / Math.max(1, n))}, 70%, 52%)`;
}
function addPicks(picks, rows) {
  if (!herd || rows === 0) return;
  const layers = herd.moeLayers.length, k = herd.expertsPerToken;
  for (let r = 0; r < rows; r++) {
    const col = [];
    for (let l = 0; l < layers; l++) col.push(picks[(l * rows + r) * k]);
    columns.push(col);
  }
  drawHeatmap();
}
function drawHeatmap() {
  const c = $("heatmap"), g = c.getContext("2d");
  const layers = herd ? herd.moeLayers.length : 0;
  const w = 8, maxCols = Math.floor(c.width / w);
  const shown = columns.slice(-maxCols);
  const h = layers ? Math.min(24, Math.floor(c.height / layers)) : 0;
  g.clearRect(0, 0, c.width, c.height);
  shown.forEach((col, x) => col.forEach((e, l) => {
    g.fillStyle = colour(e, herd.experts);
    g.fillRect(x * w, l * h, w - 1, h - 1);
  }));
}
function drawLegend() {
  const n = herd.experts;
  $("legend").innerHTML = `rows: MoE layers ${herd.moeLayers.join(", ")}; columns: tokens (newest right); colour: expert` +
    Array.from({ length: n }, (_, e) => `<span style="background:${colour(e, n)}"></span>${e}`).join("");
}

const backend = params.get("backend") || "auto";

async function load(url, expertCache, routing = true, kvDtype = undefined) {
  $("load").disabled = true;
  herd = null;
  columns.length = 0;
  try {
    herd = await loadModel(url, { expertCache, routing, kvDtype, backend, onProgress: progress });
  } finally {
    $("load").disabled = false;
  }
  $("adapter").textContent = herd.adapter;
  if (herd.adapter.startsWith("cpu (") && $("nogpu").hidden && backend === "auto") {
    $("nogpu").textContent = "This browser's WebGPU is a software fallback (no GPU behind it): herd runs the model " +
      "on the CPU instead (WebAssembly SIMD, one thread), which is faster here.";
    $("nogpu").hidden = false;
  }
  $("limits").textContent = herd.limits;
  for (const id of ["prompt", "send", "reset"]) $(id).disabled = false;
  drawLegend();
  showStats();
  return herd;
}

function line(cls, text) {
  const d = document.createElement("div");
  d.className = cls;
  d.textContent = text;
  $("log").appendChild(d);
  $("log").scrollTop = $("log").scrollHeight;
  return d;
}

async function send(text) {
  if (!herd || generating || !text.trim()) return;
  generating = true;
  $("send").disabled = true;
  $("stop").disabled = false;
  line("user", text);
  const out = line("assistant", "");
  try {
    await herd.chat(text, {
      maxTokens: 200,
      onToken: (piece, _id, picks, rows) => {
        out.textContent += piece;
        addPicks(picks, rows);
        $("log").scrollTop = $("log").scrollHeight;
      },
    });
  } catch (e) {
    line("error", "error: " + fail(e));
  } finally {
    generating = false;
    $("send").disabled = false;
    $("stop").disabled = true;
    showStats();
  }
}

async function automation() {
  const ids = params.get("prompt_ids").split(",").filter((s) => s.trim() !== "").map(Number);
  if (ids.some((x) => !Number.isInteger(x) || x < 0)) throw new Error("prompt_ids must be comma-separated token ids");
  const n = Number(params.get("max_tokens") || "16");
  if (params.get("greedy") !== null && params.get("greedy") !== "1") throw new Error("only greedy=1 is supported");
  const model = params.get("model") || "model/";
  const h = await load(model, params.get("expert_cache") || undefined, params.get("routing") !== "0", params.get("kv") || undefined);
  const out = await h.greedyIds(Uint32Array.from(ids), n);
  $("ids").textContent = Array.from(out).join(",");
  $("ids").hidden = false;
  showStats();
  document.title = "done";
}

async function main() {
  // navigator.gpu can be there with no adapter behind it (WebGPU switched off, or blocklisted).
  const adapter = navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
  if (!adapter && backend !== "cpu") {
    $("nogpu").textContent = "WebGPU is not available in this browser: herd runs the model on the CPU " +
      "(WebAssembly SIMD, one thread), many times slower than a GPU. For the GPU, use a browser with WebGPU " +
      "(Chrome or Edge 113+, Safari 26+, Firefox 141+ on Windows) with hardware acceleration on.";
    $("nogpu").hidden = false;
  }
  await init();
  if (params.get("model")) $("url").value = params.get("model");
  if (params.get("prompt_ids") !== null) {
    await automation();
    return;
  }
  $("load-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    load($("url").value, $("budget").value || undefined).catch((e) => {
      $("phase").textContent = "error: " + fail(e);
    });
  });
  $("chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("prompt").value;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => herd && herd.cancel());
  $("reset").addEventListener("click", () => {
    if (herd) herd.reset();
    $("log").textContent = "";
  });
}

main().catch((e) => {
  $("phase").textContent = "error: " + fail(e);
});
