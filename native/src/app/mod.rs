//! `herd app`: a desktop chat window (winit, egui drawn by wgpu). On the wgpu backend the window is drawn
//! on the very device the model computes on; on the CPU and CUDA backends wgpu opens a device of its own to
//! draw with. The model lives on a worker thread ([`worker`]), so the window stays responsive while it
//! computes.

mod ui;
mod views;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use eframe::{egui, egui_wgpu};
use herd_core::backend::Backend;
use herd_core::cpu::CpuBackend;

use crate::backend_arg::{choose_backend, Chosen};
use crate::files::ModelFiles;
use ui::Shot;
use views::FrameTimes;

#[derive(Args)]
pub struct AppArgs {
    #[command(flatten)]
    text: crate::TextArgs,
    /// Send this message as soon as the model has loaded (as if typed and sent).
    #[arg(long)]
    prompt: Option<String>,
    /// Attach an image (PNG, JPEG, WebP or GIF; a folder of frames or an animated GIF is a video) to the
    /// first message, as if dropped on the window. Repeat for several.
    #[arg(long, value_name = "PATH")]
    image: Vec<PathBuf>,
    /// Once the first answer is complete (to --prompt, or to a message typed into the window), save the
    /// window as a PNG here, print a JSON report (the message, the answer, where the routing heatmap is,
    /// frame times, speeds) and exit.
    #[arg(long, value_name = "PATH")]
    screenshot: Option<PathBuf>,
    /// With --screenshot: while the answer is generated, ask for a frame every 16 ms (as a user moving the
    /// mouse would) so that the report's frame times say how responsive the window stays.
    #[arg(long, requires = "screenshot")]
    measure_frames: bool,
    /// Test hook: close the window (as its close button does) after this many pieces of the answer.
    #[arg(long, hide = true, requires = "prompt", value_name = "N")]
    close_after: Option<usize>,
    /// The window's size in points, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x800", value_parser = parse_size)]
    size: (f32, f32),
}

fn parse_size(s: &str) -> Result<(f32, f32), String> {
    let bad = || format!("{s:?}: expected WIDTHxHEIGHT, e.g. 1280x800");
    let (w, h) = s.split_once('x').ok_or_else(bad)?;
    let (w, h): (f32, f32) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if !(200.0..=16384.0).contains(&w) || !(200.0..=16384.0).contains(&h) {
        return Err(format!("{s:?}: each side must be 200 to 16384"));
    }
    Ok((w, h))
}

/// What `--prompt` / `--screenshot` do: send one message when the model is ready; then, with
/// `--screenshot`, capture the window once the answer is complete, report and close.
pub struct Hook {
    prompt: Option<String>,
    /// Images to attach before the prompt is sent, and how many of them the model has not answered for.
    images: Vec<PathBuf>,
    attaching: usize,
    screenshot: Option<PathBuf>,
    /// The answer is complete.
    answered: bool,
    /// The heatmap's rectangle in the last frame, in pixels.
    heatmap: Option<egui::Rect>,
    requested: bool,
    shot: Shot,
    /// Why the hooked run failed (the exit status says so).
    error: Arc<Mutex<Option<String>>>,
    /// Close the window after this many pieces of the answer (--close-after).
    pub close_after: Option<usize>,
    measure: bool,
    /// When the idle frames began to be timed.
    idle_since: Option<std::time::Instant>,
}

/// How long --measure-frames times frames with the model idle.
const IDLE_MEASURE: std::time::Duration = std::time::Duration::from_secs(1);

impl Hook {
    /// A failure ends a hooked run (there is nobody to read the window).
    /// The window shows the error; a hooked run then captures it, reports it and ends with it.
    fn fail(&mut self, e: &str) {
        if self.screenshot.is_some() {
            *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            self.prompt = None;
            self.answered = true;
        }
    }

    /// Frames are asked for at 60 a second while the model generates (--measure-frames).
    fn measuring(&self) -> bool {
        self.measure && self.screenshot.is_some()
    }

    /// After the answer, --measure-frames times a second of frames with the model idle.
    fn idle_measuring(&self) -> bool {
        self.idle_since.is_some_and(|t| t.elapsed() < IDLE_MEASURE)
    }

    fn after_frame(&mut self, ctx: &egui::Context, said: [&str; 2], frames: &FrameTimes, live: &worker::Live) {
        let Some(path) = &self.screenshot else { return };
        if !self.answered {
            return;
        }
        if self.measuring() && self.error.lock().map_or(true, |e| e.is_none()) {
            let since = *self.idle_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < IDLE_MEASURE {
                ctx.request_repaint_after(std::time::Duration::from_millis(16));
                return;
            }
        }
        if !self.requested {
            self.requested = true;
            let (slot, c) = (self.shot.clone(), ctx.clone());
            ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(egui::ScreenshotCallback::new(move |img| {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(img);
                c.request_repaint();
            })));
            return;
        }
        let Some(img) = self.shot.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let report = match save_png(path, &img) {
            Ok(()) => serde_json::json!({
                "message": said[0],
                "answer": said[1],
                "screenshot": path,
                "size": img.size,
                "heatmap": self.heatmap.map(|r| [r.min.x, r.min.y, r.max.x, r.max.y]),
                "frame_ms": FrameTimes::summary(&frames.gaps_ms),
                "frame_cpu_ms": FrameTimes::summary(&frames.cpu_ms),
                "idle_frame_ms": FrameTimes::summary(&frames.idle_gaps_ms),
                "prefill_tok_s": live.prefill_tps,
                "decode_tok_s": live.decode_tps,
                "generated": live.generated,
                "error": *self.error.lock().unwrap_or_else(|p| p.into_inner()),
            }),
            Err(e) => {
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(crate::one_line(&e));
                serde_json::Value::Null
            }
        };
        if !report.is_null() {
            println!("{report}");
        }
        self.screenshot = None;
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
    }
}

fn save_png(path: &std::path::Path, img: &egui::ColorImage) -> Result<()> {
    let [w, h] = img.size;
    let raw: Vec<u8> = img.pixels.iter().flat_map(|c| c.to_array()).collect();
    let rgba = image::RgbaImage::from_raw(w as u32, h as u32, raw).ok_or_else(|| anyhow!("screenshot: bad size"))?;
    rgba.save_with_format(path, image::ImageFormat::Png).map_err(|e| anyhow!("{}: {e}", path.display()))
}

pub fn run(a: AppArgs) -> Result<()> {
    if let Some(p) = &a.screenshot {
        crate::files::check_output(p)?;
    }
    let t = &a.text;
    let opts = crate::load_options(&t.backend, &t.device_memory)?;
    let files = ModelFiles::new(t.model.model.clone());
    let setup = Setup { files, opts, args: a };
    match choose_backend(&setup.args.text.backend)? {
        Chosen::Cpu(weights) => setup.launch(Arc::new(CpuBackend::new().with_weight_memory(weights)), None, None),
        Chosen::Wgpu(w) => {
            let (handles, limits) = (w.handles(), w.limits());
            setup.launch(Arc::new(*w), Some(handles), Some(limits))
        }
        Chosen::Cuda(c) => setup.launch(Arc::new(*c), None, None),
    }
}

struct Setup {
    files: ModelFiles,
    opts: crate::files::LoadOptions,
    args: AppArgs,
}

type Handles = (eframe::wgpu::Instance, eframe::wgpu::Adapter, eframe::wgpu::Device, eframe::wgpu::Queue);

impl Setup {
    fn launch<B: Backend + 'static>(
        self,
        backend: Arc<B>,
        handles: Option<Handles>,
        limits: Option<String>,
    ) -> Result<()> {
        let a = self.args;
        let mut native = eframe::NativeOptions {
            viewport: egui::ViewportBuilder::default()
                .with_title("herd")
                .with_inner_size([a.size.0, a.size.1])
                .with_drag_and_drop(true),
            renderer: eframe::Renderer::Wgpu,
            ..Default::default()
        };
        if let Some((instance, adapter, device, queue)) = handles {
            // The window is drawn on the device the model computes on.
            native.wgpu_options.wgpu_setup =
                egui_wgpu::WgpuSetup::Existing(egui_wgpu::WgpuSetupExisting { instance, adapter, device, queue });
        }
        let error = Arc::new(Mutex::new(None));
        let hook = Hook {
            prompt: a.prompt,
            attaching: a.image.len(),
            images: a.image,
            screenshot: a.screenshot,
            answered: false,
            heatmap: None,
            requested: false,
            shot: Arc::new(Mutex::new(None)),
            error: error.clone(),
            measure: a.measure_frames,
            idle_since: None,
            close_after: a.close_after,
        };
        let t = a.text;
        let (files, opts) = (self.files, self.opts);
        let opened = eframe::run_native(
            "herd",
            native,
            Box::new(move |cc| {
                let info = cc.wgpu_render_state.as_ref().map(|r| r.adapter.get_info());
                let drawn_on = info
                    .as_ref()
                    .map_or("?".to_string(), |i| format!("{} ({:?}, {:?})", i.name, i.device_type, i.backend));
                // A frame drawn by a CPU adapter (lavapipe, SwiftShader) costs tens of milliseconds of the
                // cores the model computes on: an answer is redrawn 10 times a second there, 60 elsewhere.
                let cpu_drawn = info.is_some_and(|i| i.device_type == eframe::wgpu::DeviceType::Cpu);
                let repaint = std::time::Duration::from_millis(if cpu_drawn { 100 } else { 15 });
                let (ask_tx, ask_rx) = mpsc::channel();
                let (told_tx, told_rx) = mpsc::channel();
                let stop = Arc::new(AtomicBool::new(false));
                let w = worker::Worker {
                    backend,
                    files,
                    opts,
                    system: t.system,
                    flags: t.sampling,
                    max_frames: t.max_frames,
                    limits,
                    stop: stop.clone(),
                    ctx: cc.egui_ctx.clone(),
                    repaint,
                };
                let handle =
                    std::thread::Builder::new().name("herd-model".into()).spawn(move || w.run(ask_rx, told_tx))?;
                Ok(Box::new(ui::App::new(ask_tx, told_rx, stop, handle, drawn_on, hook)))
            }),
        );
        opened.map_err(|e| anyhow!("the window could not open: {e}"))?;
        if let Some(e) = error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bail!("{e}");
        }
        Ok(())
    }
}
