//! The emulator is as strict as a GPU about what host code may do: each test here is a mistake the CUDA
//! backend once made (or could make) that a GPU would punish, run on the emulator. Each fails when its fix
//! is taken out.

use herd_core::backend::{AttnParams, AttnSeq, Backend, KvPages};
use herd_core::cpu::CpuBackend;

use crate::device::{Cmd, Dev};
use crate::emu::Emu;
use crate::CudaBackend;
use crate::CudaOptions;

fn emulator() -> Option<CudaBackend> {
    match CudaBackend::emulated() {
        Ok(b) => Some(b),
        Err(e) => {
            herd_core::not_run("cuda emulator", Some("HERD_REQUIRE_CUDA_EMU"), &e);
            None
        }
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0).collect()
}

/// A thread's first call into the backend may allocate (an upload does): the context must be bound
/// first, or the driver fails with CUDA_ERROR_INVALID_CONTEXT (which was reported as "out of memory").
#[test]
fn a_threads_first_call_may_allocate() {
    let Some(be) = emulator() else { return };
    let data = values(1000, 1);
    std::thread::scope(|s| {
        s.spawn(|| {
            let b = be.upload(&data).unwrap_or_else(|e| panic!("upload from a fresh thread: {e}"));
            assert_eq!(be.read(&b).unwrap(), data);
        });
    });
}

/// Without a bound context every driver call fails, as on hardware.
#[test]
fn driver_calls_need_a_current_context() {
    let Ok(e) = Emu::new(false) else { return };
    std::thread::scope(|s| {
        s.spawn(|| {
            let msg = e.malloc(64).unwrap_err().to_string();
            assert!(msg.contains("CUDA_ERROR_INVALID_CONTEXT"), "{msg}");
            assert!(e.synchronize().is_err());
            e.bind();
            let p = e.malloc(64).unwrap();
            e.free(p).unwrap();
        });
    });
}

/// Two attention calls in one step whose dynamic shared memory is over 48 KiB, the second needing less
/// (two models with different head groups on one device): the function's limit must not be lowered under
/// the first launch, which is issued only when the step is submitted.
#[test]
fn a_smaller_launch_does_not_lower_the_shared_memory_limit_of_a_pending_one() {
    let Some(be) = emulator() else { return };
    let cpu = CpuBackend::new();
    let hd = 256;
    let (slots, pos0) = (8usize, 5u32);
    let seq = [AttnSeq { q_start: 0, q_len: 1, pos0, page_base: 0, slot_cap: slots as u32 }];
    let pages = KvPages { table: &[0], size: slots, dtype: Default::default() };
    // 16 query heads per kv head: 82,432 bytes of shared memory; then 12: 61,824.
    let cases = [16usize, 12];
    let mut outs = Vec::new();
    let mut want = Vec::new();
    for (i, &h) in cases.iter().enumerate() {
        let p = AttnParams {
            n_heads: h,
            n_kv_heads: 1,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            chunk: None,
            bidirectional: false,
            temperature: None,
        };
        let (q, k, v) = (values(h * hd, 10 + i as u32), values(hd, 20 + i as u32), values(hd, 30 + i as u32));
        let (kc, vc) = (values(slots * hd, 40 + i as u32), values(slots * hd, 50 + i as u32));
        let g = [&q, &k, &v, &kc, &vc].map(|d| be.upload(d).unwrap());
        let out = be.alloc(h * hd).unwrap();
        be.attention(&g[0], &g[1], &g[2], &g[3], &g[4], pages, &seq, &p, &out).unwrap();
        outs.push((out, g));
        let c = [&q, &k, &v, &kc, &vc].map(|d| cpu.upload(d).unwrap());
        let co = cpu.alloc(h * hd).unwrap();
        cpu.attention(&c[0], &c[1], &c[2], &c[3], &c[4], pages, &seq, &p, &co).unwrap();
        want.push(cpu.read(&co).unwrap());
    }
    // Both launches are submitted together here.
    for ((out, _), want) in outs.iter().zip(&want) {
        let got = be.read(out).unwrap_or_else(|e| panic!("{e}"));
        let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "attention differs from the CPU by {worst}");
    }
}

/// The step's metadata goes to the device through a pinned buffer; when a larger step outgrows it, the
/// copy out of the old buffer may still be queued (an upload submits a step without waiting for it), so
/// the old buffer may only be freed after that copy ran.
#[test]
fn growing_the_metadata_arena_waits_for_the_copy_out_of_the_old_buffer() {
    let Ok(dev) = Dev::emulated(&CudaOptions::default()) else { return };
    let small: Vec<u32> = (1..=4).collect();
    let big: Vec<u32> = (0..40_000).map(|i| i * 3 + 1).collect(); // 160,000 bytes: past the first 64 KiB
    let a = dev.alloc(16).unwrap();
    let b = dev.alloc(big.len() * 4).unwrap();
    let w = dev.alloc(16).unwrap();
    let Some(off) = dev.meta(&small).unwrap().meta_offset() else { panic!("metadata offset expected") };
    dev.record(Cmd::MetaCopy { dst: a, off, bytes: 16 }).unwrap();
    // Submits the small step (its metadata copy is queued, not run), then queues an upload.
    dev.upload_in_order(w, &[7u8; 16]).unwrap();
    let Some(off) = dev.meta(&big).unwrap().meta_offset() else { panic!("metadata offset expected") };
    dev.record(Cmd::MetaCopy { dst: b, off, bytes: big.len() * 4 }).unwrap();
    let got_b = dev.read(b, big.len() * 4).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bytemuck::cast_slice::<u8, u32>(&got_b), &big[..]);
    let got_a = dev.read(a, 16).unwrap();
    assert_eq!(bytemuck::cast_slice::<u8, u32>(&got_a), &small[..]);
    assert_eq!(dev.read(w, 16).unwrap(), [7u8; 16]);
}

/// Waiting on a stream while it captures a graph fails and invalidates the capture, as on the driver (so
/// a measurement or a sync from another thread during a capture is caught); so does allocating from the
/// capturing thread.
#[test]
fn waiting_on_a_capturing_stream_fails_and_invalidates_the_capture() {
    let Ok(e) = Emu::new(false) else { return };
    e.bind();
    e.begin_capture().unwrap();
    let msg = e.synchronize().unwrap_err().to_string();
    assert!(msg.contains("CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"), "{msg}");
    let msg = e.end_capture().unwrap_err().to_string();
    assert!(msg.contains("CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"), "{msg}");
    e.begin_capture().unwrap();
    assert!(e.malloc(64).is_err());
    assert!(e.end_capture().is_err());
    // A clean capture replays what it captured.
    let p = e.malloc(16).unwrap();
    e.begin_capture().unwrap();
    e.memset_async(p, 3, 16).unwrap();
    let ops = e.end_capture().unwrap();
    assert_eq!(ops.len(), 1);
    e.graph_launch(&ops).unwrap();
    e.synchronize().unwrap();
    let mut out = [0u8; 16];
    e.dtoh(&mut out, p).unwrap();
    assert_eq!(out, [3u8; 16]);
}

/// Commands run when the host waits, not when they are queued: a pinned staging buffer overwritten before
/// its copy ran shows, and a device-to-host copy does not wait for the (non-blocking) stream.
#[test]
fn the_stream_runs_when_waited_for() {
    let Ok(e) = Emu::new(false) else { return };
    e.bind();
    let p = e.malloc(8).unwrap();
    let pinned = e.malloc_host(8).unwrap();
    // SAFETY: 8 bytes of pinned memory, freed below.
    let host = unsafe { std::slice::from_raw_parts_mut(pinned, 8) };
    host.fill(1);
    e.htod_async(p, host).unwrap();
    host.fill(2); // before the copy ran: the copy sees this
    let mut out = [0u8; 8];
    e.dtoh(&mut out, p).unwrap();
    assert_eq!(out, [0xff; 8], "fresh device memory is NaN bytes until the queued copy runs");
    e.synchronize().unwrap();
    e.dtoh(&mut out, p).unwrap();
    assert_eq!(out, [2u8; 8]);
    // A copy queued from pinned memory that is freed before it runs is an error when it runs.
    e.htod_async(p, host).unwrap();
    Emu::free_host(pinned).unwrap();
    let msg = e.synchronize().unwrap_err().to_string();
    assert!(msg.contains("CUDA_ERROR_ILLEGAL_ADDRESS"), "{msg}");
    e.free(p).unwrap();
}

/// Launch checks happen when the launch is queued, as cuLaunchKernel does them: the kernel's launch bounds,
/// the grid's limits, and dynamic shared memory over 48 KiB without the function's attribute.
#[test]
fn launches_are_checked_as_the_driver_does() {
    let Ok(dev) = Dev::emulated(&CudaOptions::default()) else { return };
    let f = dev.func("attention", "attn_decode").unwrap();
    let Ok(e) = Emu::new(false) else { return };
    e.bind();
    let g = e.func("attention", "attn_decode").unwrap();
    let args = [0u64; 16];
    let block = e.launch(g, (1, 1, 1), 256, 0, &args).unwrap_err().to_string();
    assert!(block.contains("launch bounds allow 128"), "{block}");
    let grid = e.launch(g, (1, 70_000, 1), 128, 0, &args).unwrap_err().to_string();
    assert!(grid.contains("grid"), "{grid}");
    let smem = e.launch(g, (1, 1, 1), 128, 64 << 10, &args).unwrap_err().to_string();
    assert!(smem.contains("CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES"), "{smem}");
    assert!(e.set_max_dyn_smem(g, 300 << 10).is_err(), "more than an SM has");
    // Dev raises the attribute and never lowers it.
    dev.allow_smem(f, 100 << 10).unwrap();
    dev.allow_smem(f, 60 << 10).unwrap();
    assert_eq!(dev.smem_limit(f), 100 << 10);
}

/// The sync mode (`CudaOptions::sync_each`) waits after every command, so a command that faults is named in the error (without
/// it the fault surfaces at the next read, with no hint of which command it was).
#[test]
fn the_sync_mode_names_the_command_that_faulted() {
    let Ok(dev) = Dev::emulated(&CudaOptions { sync_each: true, ..CudaOptions::default() }) else { return };
    let a = dev.alloc(16).unwrap();
    dev.record(Cmd::Copy { dst: a, src: a + 4, bytes: 4 }).unwrap();
    dev.record(Cmd::Copy { dst: a, src: 0x1000, bytes: 4 }).unwrap();
    let msg = dev.read(a, 16).unwrap_err().to_string();
    assert!(
        msg.contains("command 1 of 2 (device copy of 4 bytes)") && msg.contains("CUDA_ERROR_ILLEGAL_ADDRESS"),
        "{msg}"
    );
}
