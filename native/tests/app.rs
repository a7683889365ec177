//! `herd app`, the desktop window, in a real X server without a screen (Xvfb) drawn on lavapipe: a message
//! sent through the test hook (`--prompt`), the answer read from the window's report and compared with
//! `herd run --chat --temperature 0` on the same backend, and the screenshot checked where the routing
//! heatmap is drawn.
//!
//! Needs Xvfb and a Vulkan driver: scripts/test.sh installs them and sets HERD_REQUIRE_WINDOW=1, which makes
//! a missing one a failure. Without it a missing one prints NOT RUN.

mod common;

use std::time::{Duration, Instant};

use common::*;

const PROMPT: &str = "Once upon a time";
const TOKENS: &str = "16";

/// An X server on a free display number, stopped on drop.
struct Xvfb {
    child: std::process::Child,
    display: String,
}

impl Xvfb {
    /// Starts Xvfb on a display it picks itself (`-displayfd`: no race with another test or run picking the
    /// same number) and returns once it is ready.
    fn start() -> Result<Xvfb, String> {
        use std::io::BufRead;
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("no Xvfb ({e})"))?;
        let mut line = String::new();
        let read = std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
        match (read, line.trim().parse::<u32>()) {
            (Ok(_), Ok(n)) => Ok(Xvfb { child, display: format!(":{n}") }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("Xvfb did not start (it said {line:?})"))
            }
        }
    }
}

impl Xvfb {
    /// The server, or None (with NOT RUN printed) where there is none and none is required.
    fn start_or_not_run() -> Option<Xvfb> {
        match Xvfb::start() {
            Ok(x) => Some(x),
            Err(why) => {
                herd_core::not_run("herd app under Xvfb", Some("HERD_REQUIRE_WINDOW"), &why);
                None
            }
        }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `herd ARGS` in the X server's display, killed after two minutes.
fn herd_on(x: &Xvfb, args: &[&str]) -> Output {
    finish(spawn_on(x, BIN, args), args)
}

/// `program ARGS` started in the X server's display.
fn spawn_on(x: &Xvfb, program: &str, args: &[&str]) -> std::process::Child {
    let runtime = std::env::temp_dir();
    Command::new(program)
        .args(args)
        .env("DISPLAY", &x.display)
        .env_remove("WAYLAND_DISPLAY")
        .env("XDG_RUNTIME_DIR", runtime)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
}

/// The child's output, once it ends; killed (and the test failed) after two minutes.
fn finish(mut child: std::process::Child, args: &[&str]) -> Output {
    let t0 = Instant::now();
    loop {
        if child.try_wait().expect("wait for the child").is_some() {
            return child.wait_with_output().expect("the child's output");
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("the child's output");
            panic!("{args:?} hung: killed after 120 s\n{}", describe(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_window_answers_as_herd_run_does_and_draws_the_routing() {
    let Some(x) = Xvfb::start_or_not_run() else { return };
    let sc = Scratch::new("app");
    let vision = fixture_dir(herd_conformance::vision::NAME);
    let photo = fixture_dir("vision").join("photo_200x300.png");
    // The wgpu backend draws the window on the device it computes on; the CPU backend on a device of its
    // own; the last case attaches an image (the vision path, on the vision fixture) as a drop would.
    let cases = [("wgpu", None), ("cpu", None), ("cpu", Some((s(&vision), s(&photo))))];
    for (case, (backend, image)) in cases.into_iter().enumerate() {
        let shot = sc.path(&format!("{case}.png"));
        let mut common = vec!["--backend", backend, "--max-tokens", TOKENS, "--temperature", "0"];
        if let Some((model, photo)) = image {
            common.extend(["--model", model, "--image", photo, "--kv-dtype", "f32"]);
        }
        let (want, _) = ok("herd run", herd([&["run", "--chat", "--prompt", PROMPT][..], &common].concat()));
        let want = want.trim_end_matches('\n');
        let out = herd_on(&x, &[&["app", "--prompt", PROMPT, "--screenshot", s(&shot)][..], &common].concat());
        let (stdout, _) = ok(&format!("herd app on {backend}"), out);
        let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("report: {e}: {stdout}"));
        assert!(!want.is_empty(), "herd run answered nothing");
        if image.is_some() {
            assert_eq!(report["answer"].as_str(), Some(want), "the window's answer about the image differs");
            continue;
        }
        assert_eq!(report["answer"].as_str(), Some(want), "{backend}: the window's answer differs from herd run's");

        // The screenshot is the window, and the heatmap is painted: each MoE layer's most picked expert is
        // drawn at full heat (yellow), so every row of the heatmap holds some.
        let img = image::open(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display())).to_rgba8();
        assert_eq!([img.width() as u64, img.height() as u64], [1280, 800], "{backend}: the screenshot's size");
        let r: Vec<f64> =
            report["heatmap"].as_array().expect("heatmap rect").iter().map(|v| v.as_f64().unwrap()).collect();
        let (x0, y0, x1, y1) =
            (r[0] as u32, r[1] as u32, (r[2] as u32).min(img.width()), (r[3] as u32).min(img.height()));
        assert!(x1 > x0 + 20 && y1 > y0 + 8, "{backend}: heatmap rect {r:?}");
        let rows = 4; // the demo model's MoE layers
        for row in 0..rows {
            let (ya, yb) = (y0 + (y1 - y0) * row / rows, y0 + (y1 - y0) * (row + 1) / rows);
            let hot = (ya..yb)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| {
                    let p = img.get_pixel(x, y).0;
                    p[0] > 200 && p[1] > 170 && p[2] < 110
                })
                .count();
            assert!(hot >= 16, "{backend}: heatmap row {row} has no expert drawn at full heat ({hot} pixels)");
        }
    }
}

#[test]
fn a_window_that_cannot_open_is_one_line() {
    let out = Command::new(BIN)
        .args(["app", "--backend", "cpu", "--prompt", "hi", "--screenshot", "/tmp/herd-app-no-display.png"])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .expect("spawn herd");
    fails("herd app without a display", out, &["the window could not open"]);
    let out = herd(["app", "--screenshot", "/tmp/x.png"]);
    assert!(!out.status.success(), "--screenshot without --prompt is refused\n{}", describe(&out));
}

#[test]
fn a_model_that_cannot_load_says_why_in_the_window() {
    let Some(x) = Xvfb::start_or_not_run() else { return };
    let sc = Scratch::new("app-bad");
    let model = sc.path("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.json"), "{").unwrap();
    let shot = sc.path("bad.png");
    let out = herd_on(&x, &["app", "--model", s(&model), "--prompt", PROMPT, "--screenshot", s(&shot)]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(!stderr.contains("panicked"), "{}", describe(&out));
    let line = stderr.lines().filter(|l| l.starts_with("error:")).collect::<Vec<_>>();
    assert_eq!(line.len(), 1, "one error line\n{}", describe(&out));
    assert!(line[0].contains("config.json"), "{}", describe(&out));
    // The window showed it: the report of the window it captured carries the same error.
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("report: {e}: {stdout}"));
    let shown = report["error"].as_str().unwrap_or_default();
    assert!(!shown.is_empty() && line[0].contains(shown), "{report}\n{}", describe(&out));
    assert!(shot.exists(), "no screenshot of the window with the error");
}

#[test]
fn closing_the_window_during_an_answer_stops_it() {
    let Some(x) = Xvfb::start_or_not_run() else { return };
    // On lavapipe the demo model writes about 15 tokens a second: 3,000 would take minutes, so an exit
    // within the hang timeout means the close stopped the answer.
    let args = ["app", "--backend", "wgpu", "--prompt", PROMPT, "--temperature", "0", "--max-tokens", "3000"];
    let t0 = Instant::now();
    let out = herd_on(&x, &[&args[..], &["--close-after", "3"]].concat());
    let (_, stderr) = ok("herd app closed mid-answer", out);
    assert!(stderr.contains("it stopped after"), "the window did not close during the answer:\n{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(90), "closing took {:?}", t0.elapsed());
}

#[test]
fn a_message_typed_into_the_window_goes_with_enter() {
    let Some(x) = Xvfb::start_or_not_run() else { return };
    if Command::new("xdotool").arg("version").output().is_err() {
        return herd_core::not_run("typing into herd app", Some("HERD_REQUIRE_WINDOW"), &"no xdotool");
    }
    let sc = Scratch::new("app-typed");
    let shot = sc.path("typed.png");
    let common = ["--backend", "cpu", "--max-tokens", TOKENS, "--temperature", "0"];
    let app = spawn_on(&x, BIN, &[&["app", "--screenshot", s(&shot)][..], &common].concat());
    // The title names the model once it has loaded; then the message box has the keyboard. Shift+Enter is a
    // new line in the message, Enter sends it.
    let found = finish(spawn_on(&x, "xdotool", &["search", "--sync", "--name", "^herd .* on "]), &["xdotool search"]);
    let window = String::from_utf8_lossy(&found.stdout).lines().next().unwrap_or_default().to_string();
    assert!(!window.is_empty(), "the window never said its model loaded\n{}", describe(&found));
    for keys in [
        &["windowfocus", "--sync", window.as_str()][..],
        &["type", "--delay", "15", "And God said"],
        &["key", "shift+Return"],
        &["type", "--delay", "15", "Amen."],
        &["key", "Return"],
    ] {
        let out = finish(spawn_on(&x, "xdotool", keys), keys);
        assert!(out.status.success(), "xdotool {keys:?}\n{}", describe(&out));
    }
    let (stdout, _) = ok("herd app, typed into", finish(app, &["herd app"]));
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("report: {e}: {stdout}"));
    let message = "And God said\nAmen.";
    assert_eq!(report["message"].as_str(), Some(message), "what was typed is not what was sent");
    let (want, _) = ok("herd run", herd([&["run", "--chat", "--prompt", message][..], &common].concat()));
    assert_eq!(report["answer"].as_str(), Some(want.trim_end_matches('\n')), "the typed message's answer");

    // Escape stops an answer: on lavapipe 3,000 tokens would take minutes.
    let shot = sc.path("stopped.png");
    let args = ["app", "--backend", "wgpu", "--temperature", "0", "--max-tokens", "3000", "--screenshot", s(&shot)];
    let app = spawn_on(&x, BIN, &args);
    let found = finish(spawn_on(&x, "xdotool", &["search", "--sync", "--name", "^herd .* on "]), &["xdotool search"]);
    let window = String::from_utf8_lossy(&found.stdout).lines().next().unwrap_or_default().to_string();
    let t0 = Instant::now();
    for keys in [&["windowfocus", "--sync", window.as_str()][..], &["type", "And God said"], &["key", "Return"]] {
        assert!(finish(spawn_on(&x, "xdotool", keys), keys).status.success(), "xdotool {keys:?}");
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(finish(spawn_on(&x, "xdotool", &["key", "Escape"]), &["Escape"]).status.success());
    let (stdout, _) = ok("herd app, stopped", finish(app, &["herd app"]));
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("report: {e}: {stdout}"));
    let n = report["generated"].as_u64().unwrap_or(0);
    assert!(n > 0 && n < 3000, "Escape did not stop the answer: {n} tokens\n{report}");
    assert!(t0.elapsed() < Duration::from_secs(90), "stopping took {:?}", t0.elapsed());
}
