// Runs a WebAssembly program built for wasm32-wasip1 under Node's WASI, with the given arguments and the
// current directory readable: how the CPU backend's SIMD128 kernels are tested off the browser
// (scripts/cross-test.sh). Exits with the program's exit code.
// Usage: node --single-threaded tests/tools/wasi-run.mjs PROGRAM.wasm [ARGS...]
// (--single-threaded: Node 20 with its background threads crashed about every other run after the program had
// returned; see scripts/cross-test.sh.)
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, env, exit } from "node:process";

const [program, ...args] = argv.slice(2);
if (!program) {
  console.error("usage: node wasi-run.mjs PROGRAM.wasm [ARGS...]");
  exit(2);
}
const wasi = new WASI({ version: "preview1", args: [program, ...args], env, preopens: { ".": "." }, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(program));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
exit(wasi.start(instance));
