//! The live views beside the chat in `herd app`: which expert each MoE layer's router picked (a heatmap of
//! the answer so far and a strip of the latest tokens), and the frame times the window keeps.

use std::collections::VecDeque;

use eframe::egui::{self, Color32, Rect, Sense, Stroke, Vec2};

/// Tokens the strip shows, newest on the right.
const STRIP: usize = 48;

/// The routers' picks of the current answer.
pub struct Routing {
    /// Model layer index of each MoE layer, in order (the views' rows).
    pub layers: Vec<usize>,
    pub experts: usize,
    pub k: usize,
    /// Picks per (row, expert), rows × experts.
    counts: Vec<u32>,
    /// Per recent token, each MoE layer's first pick (None where the step read none for that layer).
    strip: VecDeque<Vec<Option<u32>>>,
    /// Rows (tokens) counted.
    pub rows: u64,
}

impl Routing {
    pub fn new(layers: Vec<usize>, experts: usize, k: usize) -> Self {
        let counts = vec![0; layers.len() * experts];
        Routing { layers, experts, k: k.max(1), counts, strip: VecDeque::new(), rows: 0 }
    }

    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.strip.clear();
        self.rows = 0;
    }

    /// Adds one step's picks: per MoE layer (by model layer index), its rows' k experts each.
    pub fn add(&mut self, picks: &[(usize, Vec<u32>)]) {
        let rows = picks.iter().map(|(_, v)| v.len() / self.k).min().unwrap_or(0);
        if rows == 0 {
            return;
        }
        let mut last = vec![None; self.layers.len()];
        for (layer, v) in picks {
            let Some(pos) = self.layers.iter().position(|l| l == layer) else { continue };
            for row in v[..rows * self.k].chunks(self.k) {
                for &e in row {
                    if let Some(c) = self.counts.get_mut(pos * self.experts + e as usize) {
                        *c += 1;
                    }
                }
            }
            last[pos] = v.get((rows - 1) * self.k).copied();
        }
        self.rows += rows as u64;
        self.strip.push_back(last);
        while self.strip.len() > STRIP {
            self.strip.pop_front();
        }
    }

    /// Draws the heatmap (rows: MoE layers; columns: experts; brighter: picked more often in this answer)
    /// and under it the strip (columns: the latest tokens; colour: the expert picked). Returns the
    /// heatmap's rectangle (in points).
    pub fn show(&self, ui: &mut egui::Ui) -> Rect {
        let (n, e) = (self.layers.len().max(1), self.experts.max(1));
        let label_w = 34.0;
        let w = ui.available_width().max(label_w + 40.0);
        // Cells fit the panel's width and at most HEIGHT points in all (Scout has 48 MoE layers, Maverick 128
        // experts); a row is labelled where there is room for its label.
        let cw = ((w - label_w) / e as f32).min(28.0);
        let ch = cw.min(HEIGHT / n as f32).max(1.0);
        let every = (11.0 / ch).ceil().max(1.0) as usize;
        let (rect, _) = ui.allocate_exact_size(Vec2::new(label_w + cw * e as f32, ch * n as f32), Sense::hover());
        let p = ui.painter_at(rect);
        let font = egui::FontId::monospace(10.0);
        let text = ui.visuals().text_color();
        p.rect_filled(rect, 0.0, Color32::from_gray(18));
        let gap = if cw >= 4.0 && ch >= 4.0 { 0.5 } else { 0.0 };
        for (i, layer) in self.layers.iter().enumerate() {
            let y = rect.top() + ch * i as f32;
            if i % every == 0 {
                let at = egui::pos2(rect.left() + 2.0, y + ch / 2.0);
                p.text(at, egui::Align2::LEFT_CENTER, format!("L{layer}"), font.clone(), text);
            }
            let row = &self.counts[i * e..(i + 1) * e];
            let max = row.iter().copied().max().unwrap_or(0).max(1) as f32;
            for (j, &c) in row.iter().enumerate() {
                let at = egui::pos2(rect.left() + label_w + cw * j as f32, y);
                p.rect_filled(Rect::from_min_size(at, Vec2::new(cw, ch)).shrink(gap), 0.0, heat(c as f32 / max));
            }
        }
        // The strip: the latest tokens left to right, one row per MoE layer.
        ui.add_space(4.0);
        let sw = (ui.available_width() / STRIP as f32).min(10.0);
        let sh = sw.min(HEIGHT / 2.0 / n as f32).max(1.0);
        let (srect, _) = ui.allocate_exact_size(Vec2::new(sw * STRIP as f32, sh * n as f32), Sense::hover());
        let sp = ui.painter_at(srect);
        sp.rect_filled(srect, 0.0, Color32::from_gray(18));
        let x0 = srect.right() - sw * self.strip.len() as f32;
        for (t, col) in self.strip.iter().enumerate() {
            for (i, pick) in col.iter().enumerate() {
                let Some(e) = pick else { continue };
                let at = egui::pos2(x0 + sw * t as f32, srect.top() + sh * i as f32);
                sp.rect_filled(Rect::from_min_size(at, Vec2::new(sw, sh)), 0.0, expert_color(*e, self.experts));
            }
        }
        sp.rect_stroke(srect, 0.0, Stroke::new(1.0, Color32::from_gray(60)), egui::StrokeKind::Outside);
        rect
    }
}

/// The heatmap's greatest height in points (the strip's is half).
const HEIGHT: f32 = 240.0;

/// Dark blue (never) to yellow (the layer's most picked expert).
fn heat(x: f32) -> Color32 {
    let x = x.clamp(0.0, 1.0);
    let lerp = |a: f32, b: f32| (a + (b - a) * x) as u8;
    if x == 0.0 {
        return Color32::from_rgb(30, 32, 48);
    }
    Color32::from_rgb(lerp(40.0, 255.0), lerp(60.0, 220.0), lerp(140.0, 40.0))
}

/// A hue per expert.
fn expert_color(e: u32, experts: usize) -> Color32 {
    let h = e as f32 / experts.max(1) as f32;
    egui::ecolor::Hsva::new(h, 0.75, 0.95, 1.0).into()
}

/// Frame-to-frame times while the model generates, in milliseconds.
#[derive(Default)]
pub struct FrameTimes {
    last: Option<std::time::Instant>,
    pub gaps_ms: Vec<f32>,
    /// The UI's own time per frame (building it and rendering, without waiting for the display).
    pub cpu_ms: Vec<f32>,
    /// Frame-to-frame times with the model idle.
    pub idle_gaps_ms: Vec<f32>,
}

impl FrameTimes {
    /// Called at the start of each frame: `busy` says whether the model is generating now, `idle` whether
    /// frames are being timed while it is not (the benchmark's comparison).
    pub fn frame(&mut self, busy: bool, idle: bool, cpu_s: Option<f32>) {
        let now = std::time::Instant::now();
        if busy || idle {
            if let Some(l) = self.last {
                let gap = now.duration_since(l).as_secs_f32() * 1000.0;
                if busy { &mut self.gaps_ms } else { &mut self.idle_gaps_ms }.push(gap);
            }
            if let (true, Some(c)) = (busy, cpu_s) {
                self.cpu_ms.push(c * 1000.0);
            }
            self.last = Some(now);
        } else {
            self.last = None;
        }
    }

    /// p50, p99 and max of a list.
    pub fn summary(v: &[f32]) -> serde_json::Value {
        if v.is_empty() {
            return serde_json::json!(null);
        }
        let mut s = v.to_vec();
        s.sort_by(f32::total_cmp);
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
        serde_json::json!({ "frames": s.len(), "p50": at(0.5), "p99": at(0.99), "max": s[s.len() - 1] })
    }
}

/// Bytes as KiB/MiB/GiB.
pub fn bytes(b: u64) -> String {
    crate::fit::human(b as usize)
}
