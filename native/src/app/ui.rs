//! The window of `herd app`: the chat in the middle (history, a text box, Send / Stop / New chat), the
//! sampling settings and attached images on the left, the live views on the right. Everything the model
//! does happens on the worker thread; each frame only takes what it has said since the last one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use eframe::egui::{self, Color32, Key, KeyboardShortcut, Modifiers, RichText};

use super::views::{bytes, FrameTimes, Routing};
use super::worker::{Ask, Live, Loaded, Settings, Told};
use super::Hook;

enum State {
    Loading(usize, usize),
    Ready,
    Failed(String),
}

#[derive(PartialEq)]
enum Who {
    User,
    Model,
}

pub struct App {
    asks: Option<Sender<Ask>>,
    told: Receiver<Told>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
    state: State,
    info: Option<Box<Loaded>>,
    settings: Settings,
    seed: u64,
    seeded: bool,
    input: String,
    image_path: String,
    attached: usize,
    chat: Vec<(Who, String)>,
    generating: bool,
    error: Option<String>,
    note: Option<String>,
    live: Live,
    routing: Option<Routing>,
    frames: FrameTimes,
    drawn_on: String,
    hook: Hook,
    /// Pieces of the current answer.
    pieces: usize,
    /// Close the window at the end of this frame (the hook's --close-after).
    ctx_close: bool,
    /// Put the keyboard in the message box (once the model is ready, and after each answer).
    focus_box: bool,
}

impl App {
    pub fn new(
        asks: Sender<Ask>,
        told: Receiver<Told>,
        stop: Arc<AtomicBool>,
        worker: JoinHandle<()>,
        drawn_on: String,
        hook: Hook,
    ) -> Self {
        for path in &hook.images {
            let _ = asks.send(Ask::Attach(path.clone()));
        }
        App {
            asks: Some(asks),
            told,
            stop,
            worker: Some(worker),
            state: State::Loading(0, 1),
            info: None,
            settings: Settings { temperature: 0.0, top_p: 1.0, top_k: 0, seed: None, max_tokens: 256 },
            seed: 0,
            seeded: false,
            input: String::new(),
            image_path: String::new(),
            attached: 0,
            chat: Vec::new(),
            generating: false,
            error: None,
            note: None,
            live: Live::default(),
            routing: None,
            frames: FrameTimes::default(),
            drawn_on,
            hook,
            pieces: 0,
            ctx_close: false,
            focus_box: false,
        }
    }

    fn ask(&self, a: Ask) {
        if let Some(s) = &self.asks {
            let _ = s.send(a);
        }
    }

    fn send(&mut self) {
        let text = self.input.trim().to_string();
        if text.is_empty() || self.generating || !matches!(self.state, State::Ready) {
            return;
        }
        let mut shown = text.clone();
        if self.attached > 0 {
            shown = format!("[{} image{}] {shown}", self.attached, if self.attached == 1 { "" } else { "s" });
        }
        self.chat.push((Who::User, shown));
        self.chat.push((Who::Model, String::new()));
        self.input.clear();
        self.attached = 0;
        (self.error, self.note) = (None, None);
        self.generating = true;
        self.pieces = 0;
        if let Some(r) = &mut self.routing {
            r.clear();
        }
        self.settings.seed = self.seeded.then_some(self.seed);
        self.stop.store(false, Ordering::SeqCst);
        self.ask(Ask::Send { text, params: self.settings.clone() });
    }

    /// Takes what the worker said since the last frame.
    fn take_news(&mut self, ctx: &egui::Context) {
        while let Ok(t) = self.told.try_recv() {
            match t {
                Told::Loading(d, n) => self.state = State::Loading(d, n),
                Told::Loaded(info) => {
                    self.settings = info.settings.clone();
                    self.seeded = info.settings.seed.is_some();
                    self.seed = info.settings.seed.unwrap_or(0);
                    self.routing = (!info.moe_layers.is_empty())
                        .then(|| Routing::new(info.moe_layers.clone(), info.experts, info.top_k));
                    // The window's title says what it runs once it can (tests wait for it to type).
                    let title = format!("herd — {} on {}", info.model, info.backend);
                    ctx.send_viewport_cmd(egui::ViewportCommand::Title(title));
                    self.info = Some(info);
                    self.state = State::Ready;
                    self.focus_box = true;
                }
                Told::LoadFailed(e) => {
                    self.hook.fail(&e);
                    self.state = State::Failed(e);
                }
                Told::Piece { text, picks, live } => {
                    self.pieces += 1;
                    if self.hook.close_after.is_some_and(|n| self.pieces >= n) {
                        self.hook.close_after = None;
                        self.ctx_close = true;
                    }
                    if let Some((Who::Model, s)) = self.chat.last_mut() {
                        s.push_str(&text);
                    }
                    if let Some(r) = &mut self.routing {
                        r.add(&picks);
                    }
                    self.live = Live { kv_bytes: self.live.kv_bytes, ..live };
                }
                Told::Done { live, note } => {
                    self.generating = false;
                    self.focus_box = true;
                    self.live = live;
                    self.note = note;
                    self.hook.answered = true;
                }
                Told::Failed(e) => {
                    self.generating = false;
                    // The message goes back into the box, the conversation as it was.
                    self.chat.pop();
                    if let Some((Who::User, _)) = self.chat.last() {
                        self.chat.pop();
                    }
                    self.hook.fail(&e);
                    self.error = Some(e);
                }
                Told::Attached(got) => {
                    self.hook.attaching = self.hook.attaching.saturating_sub(1);
                    match got {
                        Ok(n) => self.attached = n,
                        Err(e) => {
                            self.hook.fail(&e);
                            self.error = Some(e);
                        }
                    }
                }
            }
        }
        // The hook's message goes once the model is ready and its images are attached.
        if matches!(self.state, State::Ready) && self.hook.attaching == 0 {
            if let Some(p) = self.hook.prompt.take() {
                self.input = p;
                self.send();
            }
        }
    }

    fn settings_panel(&mut self, ui: &mut egui::Ui) {
        ui.heading("Sampling");
        let s = &mut self.settings;
        ui.add(egui::Slider::new(&mut s.temperature, 0.0..=2.0).text("temperature"));
        ui.add(egui::Slider::new(&mut s.top_p, 0.01..=1.0).text("top-p"));
        ui.add(egui::Slider::new(&mut s.top_k, 0..=200).text("top-k (0: off)"));
        ui.add(egui::Slider::new(&mut s.max_tokens, 1..=4096).logarithmic(true).text("max tokens"));
        ui.horizontal(|ui| {
            ui.checkbox(&mut self.seeded, "seed");
            ui.add_enabled(self.seeded, egui::DragValue::new(&mut self.seed));
        });
        ui.separator();
        ui.heading("Images");
        ui.label("Drop image files on the window, or give a path:");
        ui.horizontal(|ui| {
            ui.add(egui::TextEdit::singleline(&mut self.image_path).desired_width(150.0));
            if ui.button("Attach").clicked() && !self.image_path.trim().is_empty() {
                self.ask(Ask::Attach(self.image_path.trim().into()));
                self.image_path.clear();
            }
        });
        ui.label(format!("{} attached to the next message", self.attached));
    }

    fn live_panel(&mut self, ui: &mut egui::Ui) {
        let Some(info) = &self.info else { return };
        ui.heading("Routing");
        match &self.routing {
            Some(r) => {
                ui.label(format!(
                    "{} MoE layers × {} experts, {} rows in this answer",
                    r.layers.len(),
                    r.experts,
                    r.rows
                ));
                let rect = r.show(ui);
                ui.label(
                    RichText::new(
                        "Above: rows are MoE layers, columns experts 0 to the last; the brighter, the more often \
                         picked. Below: the latest tokens left to right, coloured by the expert picked.",
                    )
                    .small(),
                );
                self.hook.heatmap = Some(rect * ui.ctx().pixels_per_point());
            }
            None => {
                ui.label("This model has no routed experts.");
            }
        }
        ui.separator();
        ui.heading("Speed");
        let l = &self.live;
        ui.label(format!("prefill: {} tokens, {:.0} tok/s", l.prompt_tokens, l.prefill_tps));
        if l.cached_tokens > 0 {
            ui.label(format!("  {} reused from the cache", l.cached_tokens));
        }
        ui.label(format!("decode: {} tokens, {:.1} tok/s", l.generated, l.decode_tps));
        ui.separator();
        ui.heading("Expert cache");
        if l.expert_lookups > 0 {
            ui.label(format!(
                "hits: {:.1}% of {} lookups",
                100.0 * l.expert_hits as f64 / l.expert_lookups as f64,
                l.expert_lookups
            ));
        }
        ui.label(format!("moved to the device: {}", bytes(l.expert_bytes_moved)));
        ui.separator();
        ui.heading("Memory");
        ui.label(format!("weights: {}", bytes(info.weight_bytes as u64)));
        ui.label(format!("expert cache: {}", bytes(l.expert_cache_bytes)));
        ui.label(format!("KV cache: {}", bytes(l.kv_bytes as u64)));
        if let Some(rss) = rss() {
            ui.label(format!("process: {}", bytes(rss)));
        }
        ui.separator();
        ui.heading("Device");
        ui.label(RichText::new(&info.backend).small());
        ui.label(RichText::new(format!("context: {} tokens", info.context)).small());
        if let Some(lim) = &info.limits {
            ui.label(RichText::new(lim).small());
        }
        ui.label(RichText::new(format!("window drawn on: {}", self.drawn_on)).small());
    }

    fn chat_panel(&mut self, ui: &mut egui::Ui) {
        match &self.state {
            State::Loading(d, n) => {
                ui.label("Loading the model…");
                ui.add(egui::ProgressBar::new(*d as f32 / (*n).max(1) as f32).text(format!("{d}/{n} layers")));
            }
            State::Failed(e) => {
                ui.colored_label(Color32::from_rgb(255, 110, 110), format!("The model did not load: {e}"));
            }
            State::Ready => {}
        }
        if let Some(e) = &self.error {
            ui.colored_label(Color32::from_rgb(255, 110, 110), e);
        }
        if let Some(n) = &self.note {
            ui.colored_label(Color32::from_rgb(230, 200, 120), n);
        }
        let ready = matches!(self.state, State::Ready);
        egui::Panel::bottom("input").show(ui, |ui| {
            ui.add_space(4.0);
            let edit = egui::TextEdit::multiline(&mut self.input)
                .id_salt("message")
                .hint_text("Message (Enter sends, Shift+Enter starts a new line, Escape stops the answer)")
                .desired_rows(3)
                .desired_width(f32::INFINITY)
                .return_key(KeyboardShortcut::new(Modifiers::SHIFT, Key::Enter));
            // Enter sends (Shift+Enter is the new line). The modifiers are the key event's own: Shift may be
            // up again by the time a slow frame reads the input.
            let enter = ui.input(|i| {
                i.events.iter().any(|e| {
                    matches!(e, egui::Event::Key { key: Key::Enter, pressed: true, modifiers, .. } if !modifiers.shift)
                })
            });
            let r = ui.add_enabled(ready, edit);
            // The box may give up its focus on the Enter itself.
            let enter = enter && (r.has_focus() || r.lost_focus());
            if ready && std::mem::take(&mut self.focus_box) {
                r.request_focus();
            }
            ui.horizontal(|ui| {
                if ui.add_enabled(ready && !self.generating, egui::Button::new("Send")).clicked() || enter {
                    self.send();
                }
                // Escape stops the answer, Ctrl+N starts a new chat, as the buttons do.
                let esc = ui.input_mut(|i| i.consume_key(Modifiers::NONE, Key::Escape));
                let new = ui.input_mut(|i| i.consume_key(Modifiers::COMMAND, Key::N));
                let stop = ui.add_enabled(self.generating, egui::Button::new("Stop")).on_hover_text("Escape");
                if self.generating && (stop.clicked() || esc) {
                    self.stop.store(true, Ordering::SeqCst);
                }
                let fresh = ui.add_enabled(ready && !self.generating, egui::Button::new("New chat"));
                if ready && !self.generating && (fresh.on_hover_text("Ctrl+N").clicked() || new) {
                    self.chat.clear();
                    self.attached = 0;
                    (self.error, self.note) = (None, None);
                    self.ask(Ask::NewChat);
                }
                if self.generating {
                    // Not a spinner: its animation would keep the window drawing while the model computes.
                    ui.label("generating…");
                }
            });
        });
        egui::ScrollArea::vertical().stick_to_bottom(true).auto_shrink([false, false]).show(ui, |ui| {
            for (who, text) in &self.chat {
                let (name, color) = match who {
                    Who::User => ("You", Color32::from_rgb(120, 180, 255)),
                    Who::Model => ("herd", Color32::from_rgb(140, 220, 140)),
                };
                ui.label(RichText::new(name).strong().color(color));
                ui.label(text.as_str());
                ui.add_space(6.0);
            }
        });
    }
}

impl eframe::App for App {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        self.frames.frame(self.generating, self.hook.idle_measuring(), frame.info().cpu_usage);
        self.take_news(ui.ctx());
        let ctx = ui.ctx().clone();
        let dropped: Vec<_> = ctx.input(|i| i.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).collect());
        for p in dropped {
            self.ask(Ask::Attach(p));
        }
        let title = match &self.info {
            Some(i) => format!("herd — {} on {}", i.model, i.backend),
            None => "herd".to_string(),
        };
        egui::Panel::top("title").show(ui, |ui| {
            ui.label(RichText::new(title).strong());
        });
        egui::Panel::left("settings").min_size(230.0).show(ui, |ui| self.settings_panel(ui));
        egui::Panel::right("live")
            .min_size(330.0)
            .show(ui, |ui| egui::ScrollArea::vertical().show(ui, |ui| self.live_panel(ui)));
        egui::CentralPanel::default_margins().show(ui, |ui| self.chat_panel(ui));
        if ctx.input(|i| !i.raw.hovered_files.is_empty()) {
            ctx.debug_painter().text(
                ctx.content_rect().center(),
                egui::Align2::CENTER_CENTER,
                "Drop to attach to the next message",
                egui::FontId::proportional(24.0),
                Color32::WHITE,
            );
        }
        if self.generating && self.hook.measuring() {
            // Measuring: ask for a frame every 16 ms while the model computes, as a user moving the mouse
            // or typing would, and time how far apart they come.
            ctx.request_repaint_after(std::time::Duration::from_millis(16));
        }
        self.hook.after_frame(&ctx, last_exchange(&self.chat), &self.frames, &self.live);
        if std::mem::take(&mut self.ctx_close) {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }

    fn on_exit(&mut self) {
        // A generation in progress stops within a step; the worker then sees the window gone and ends.
        if self.generating {
            eprintln!("herd app: the window closed during an answer: it stopped after {} pieces", self.pieces);
        }
        self.stop.store(true, Ordering::SeqCst);
        self.asks = None;
        if matches!(self.state, State::Ready) {
            if let Some(w) = self.worker.take() {
                let _ = w.join();
            }
        }
    }
}

/// The last message and its answer, as the chat shows them.
fn last_exchange(chat: &[(Who, String)]) -> [&str; 2] {
    match chat {
        [.., (Who::User, m), (Who::Model, a)] => [m, a],
        _ => ["", ""],
    }
}

/// The process's resident memory (Linux).
fn rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// A screenshot taken by the hook, waiting to be written.
pub type Shot = Arc<Mutex<Option<Arc<egui::ColorImage>>>>;
