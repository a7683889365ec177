//! Golden tests on the CUDA backend: the same transformers references and tolerances as the CPU and wgpu,
//! prefill and token-by-token decode (which replays CUDA graphs: the test checks that it did), and the
//! synthetic weights that `herd bench --synthetic` makes on the device against the host generator. Without a
//! GPU the tests say NOT RUN; with HERD_REQUIRE_CUDA=1 (scripts/gpu-check.sh) that is a failure.
//!
//! The same checks run on the CUDA backend's CPU emulator (its host code and .cu kernels compiled as C++),
//! so machines without a GPU test the CUDA path too; HERD_REQUIRE_CUDA_EMU=1 (scripts/test.sh, which
//! installs a C++ compiler) makes a missing compiler a failure.

use std::sync::{Arc, OnceLock};

use herd_conformance::golden::{check_greedy, check_greedy_paged, check_logits, check_logits_paged, BF16_TOL, F32_TOL};
use herd_conformance::{backend_or_not_run, cuda_options_from_env};
use herd_core::backend::Backend;
use herd_core::checkpoint::TensorRef;
use herd_core::cpu::CpuBackend;
use herd_core::quant::Fill;
use herd_core::quant::{DType, GroupAxis, Grouping, ScaleType};
use herd_cuda::CudaBackend;

fn gpu() -> Option<Arc<CudaBackend>> {
    static GPU: OnceLock<Option<Arc<CudaBackend>>> = OnceLock::new();
    let made = || CudaBackend::with_options(0, &cuda_options_from_env());
    GPU.get_or_init(|| backend_or_not_run("cuda", "HERD_REQUIRE_CUDA", made())).clone()
}

fn emulator() -> Option<Arc<CudaBackend>> {
    static EMU: OnceLock<Option<Arc<CudaBackend>>> = OnceLock::new();
    let made = || CudaBackend::emulated_with(&cuda_options_from_env());
    EMU.get_or_init(|| backend_or_not_run("cuda emulator", "HERD_REQUIRE_CUDA_EMU", made())).clone()
}

#[test]
fn golden_fixtures_on_cuda() {
    let Some(be) = gpu() else { return };
    golden(&be);
}

#[test]
fn golden_fixtures_on_the_cuda_emulator() {
    let Some(be) = emulator() else { return };
    golden(&be);
}

fn golden(be: &Arc<CudaBackend>) {
    for name in ["scout", "maverick", "guard", "demo"] {
        check_logits(be, name, F32_TOL, false);
        check_logits(be, name, F32_TOL, true);
        check_greedy(be, name);
    }
    check_logits(be, "scout_bf16", BF16_TOL, false);
    check_logits(be, "scout_bf16", BF16_TOL, true);
    // Other page sizes than the backend's 16: 3 does not divide the chunk of 8 (rings of 9 slots), 1 is a
    // page per slot.
    for page in [1, 3] {
        check_logits_paged(be, "scout", F32_TOL, true, Some(page));
        check_greedy_paged(be, "scout", Some(page));
    }
    check_logits_paged(be, "guard", F32_TOL, true, Some(5));
    let g = be.graph_stats();
    eprintln!("cuda graphs: {g:?}");
    // With graphs off (HERD_CUDA_GRAPHS=0: the GPU check's sanitizer runs) every step is its own launches.
    if cuda_options_from_env().graphs {
        assert!(g.captured > 0 && g.replayed > 0, "decode steps were not replayed as CUDA graphs: {g:?}");
    } else {
        assert!(g.captured == 0 && g.replayed == 0, "graphs were used although HERD_CUDA_GRAPHS=0: {g:?}");
    }
}

/// The device generator makes the same values as the host one (read back through an embedding lookup).
#[test]
fn synthetic_weights_match_the_host_generator() {
    if let Some(be) = gpu() {
        synthetic_matches(&be);
    }
}

#[test]
fn synthetic_weights_match_the_host_generator_on_the_emulator() {
    if let Some(be) = emulator() {
        synthetic_matches(&be);
    }
}

fn synthetic_matches(be: &CudaBackend) {
    let cpu = CpuBackend::new();
    let (v, d) = (64usize, 40usize);
    let ids: Vec<u32> = (0..v as u32).collect();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for fill in [Fill::Uniform { seed: 99, scale: 0.5 }, Fill::Ones] {
            let rows = |b: &dyn Fn(&[usize]) -> Vec<f32>| b(&[v, d]);
            let want = rows(&|shape| {
                let w = cpu.synthetic_weight("t", shape, dtype, fill).unwrap();
                let (i, o) = (cpu.upload_u32(&ids).unwrap(), cpu.alloc(v * d).unwrap());
                cpu.embed(&w, &i, v, d, &o).unwrap();
                cpu.read(&o).unwrap()
            });
            let got = rows(&|shape| {
                let w = be.synthetic_weight("t", shape, dtype, fill).unwrap();
                let (i, o) = (be.upload_u32(&ids).unwrap(), be.alloc(v * d).unwrap());
                be.embed(&w, &i, v, d, &o).unwrap();
                be.read(&o).unwrap()
            });
            assert_eq!(got, want, "{dtype:?} {fill:?}");
        }
    }
    // Quantized on the device exactly as the host quantizes (values and scales): rows of a table grouped
    // along its last axis, and expert tensors grouped along their input axis (through the MoE op).
    let g = |group, axis| Grouping { group, scale: ScaleType::BF16, axis };
    for dtype in
        [DType::Q4(g(32, GroupAxis::Last)), DType::Q8(Grouping { scale: ScaleType::F16, ..g(8, GroupAxis::Last) })]
    {
        let fill = Fill::Uniform { seed: 5, scale: 0.3 };
        let want = {
            let w = cpu.synthetic_weight("t", &[v, 64], dtype, fill).unwrap();
            let (i, o) = (cpu.upload_u32(&ids).unwrap(), cpu.alloc(v * 64).unwrap());
            cpu.embed(&w, &i, v, 64, &o).unwrap();
            cpu.read(&o).unwrap()
        };
        let got = {
            let w = be.synthetic_weight("t", &[v, 64], dtype, fill).unwrap();
            let (i, o) = (be.upload_u32(&ids).unwrap(), be.alloc(v * 64).unwrap());
            be.embed(&w, &i, v, 64, &o).unwrap();
            be.read(&o).unwrap()
        };
        assert_eq!(got, want, "{dtype:?}");
    }
    let (e, dm, f) = (4usize, 64usize, 32usize);
    let q = DType::Q4(g(16, GroupAxis::SecondLast));
    let fill = |seed| Fill::Uniform { seed, scale: 0.2 };
    // The same experts made on the device by its generator and made on the host and uploaded, each through
    // the device's MoE op (the CPU would round the activations to int8, which the device does not).
    let x: Vec<f32> = (0..5 * dm).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let run = |on_device: bool| -> Vec<f32> {
        let make = |name: &str, shape: &[usize], fill| {
            if on_device {
                be.synthetic_weight(name, shape, q, fill).unwrap()
            } else {
                let bytes = herd_core::quant::fill::tensor_bytes(0, shape, q, fill).unwrap();
                be.load_weight(&TensorRef::owned(name, q, shape.to_vec(), bytes)).unwrap()
            }
        };
        let gu = make("gu", &[e, dm, 2 * f], fill(1));
        let dn = make("dn", &[e, f, dm], fill(2));
        let (xb, ib, sb, o) = (
            be.upload(&x).unwrap(),
            be.upload_u32(&[0, 3, 1, 2, 3]).unwrap(),
            be.upload(&[1.0, 0.5, 0.8, 0.7, 0.9]).unwrap(),
            be.alloc(5 * dm).unwrap(),
        );
        be.moe(&xb, 5, &ib, &sb, 1, &gu, &dn, &o).unwrap();
        be.read(&o).unwrap()
    };
    let want = run(false);
    let got = run(true);
    let err = herd_conformance::table::nmse(&got, &want);
    assert!(err < 1e-10, "quantized experts made on the device differ: nmse {err:.2e}");
}

/// Two threads stepping two models on one device at once: each op's commands, metadata and scratch stay one
/// unbroken run, and a read in one thread never submits half of the other's op. (Before ops were made
/// atomic, this interleaving broke decode logits, though only when the timing hit the window; so this test
/// can miss a regression, not pass a broken one.)
#[test]
fn concurrent_models_on_one_device_stay_correct() {
    let Some(be) = emulator() else { return };
    std::thread::scope(|s| {
        for name in ["scout", "guard"] {
            let be = be.clone();
            s.spawn(move || {
                check_logits(&be, name, F32_TOL, true);
                check_greedy(&be, name);
            });
        }
    });
}

/// The vision path (tests/fixtures/scout_vision): the tower's rows, then logits and greedy ids with two
/// images in the prompt, on a GPU and on the emulator.
#[test]
fn images_in_prompts_match_transformers_on_cuda() {
    for be in [gpu(), emulator()].into_iter().flatten() {
        herd_conformance::vision::check_all(&be);
    }
}
