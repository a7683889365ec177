//! The op table's rows as results: the error measure, timing, and the table as text.

use std::time::Instant;

use herd_core::backend::Backend;
use herd_core::Result;

/// One row's outcome.
pub struct RowResult {
    pub op: &'static str,
    pub case: String,
    pub nmse: f64,
    pub tol: f64,
    /// Seconds per call (perf mode), bytes moved and flops per call.
    pub secs: Option<f64>,
    pub bytes: f64,
    pub flops: f64,
    pub error: Option<String>,
}

impl RowResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.nmse.is_finite() && self.nmse <= self.tol
    }
}

/// Normalised mean squared error Σ(a−b)² / Σb²; NaN/Inf (or a length mismatch) gives +∞.
pub fn nmse(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.iter().chain(b).any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().max(1e-30);
    num / den
}

/// Runs `f` once for the result; in perf mode again, in batches that each end with a read (so the time
/// counts execution, however far recording runs ahead of the device), until ~0.2 s have passed; returns
/// seconds per call.
pub(crate) fn timed<B: Backend>(
    be: &B,
    perf: bool,
    sync: &B::Buffer,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Option<f64>> {
    // Reading the buffer the op wrote waits for it (a u32 buffer is read as one).
    let wait = || -> Result<()> {
        if be.buffer_desc(sync).is_u32 {
            be.read_u32(sync).map(drop)
        } else {
            be.read(sync).map(drop)
        }
    };
    f()?;
    wait()?;
    if !perf {
        return Ok(None);
    }
    f()?; // warm
    wait()?;
    let t = Instant::now();
    let (mut n, mut batch) = (0, 1);
    while n < 3 || t.elapsed().as_secs_f64() < 0.2 {
        for _ in 0..batch {
            f()?;
        }
        wait()?;
        n += batch;
        batch = (batch * 2).min(64);
    }
    Ok(Some(t.elapsed().as_secs_f64() / n as f64))
}

pub(crate) struct Out {
    pub got: Vec<f32>,
    pub want: Vec<f32>,
    pub secs: Option<f64>,
    pub bytes: f64,
    pub flops: f64,
}

/// Adds a row's outcome to `rows` unless `filter` leaves its op out.
pub(crate) fn push_row(
    rows: &mut Vec<RowResult>,
    filter: Option<&str>,
    op: &'static str,
    case: String,
    tol: f64,
    res: Result<Out>,
) {
    if filter.is_some_and(|f| !op.contains(f)) {
        return;
    }
    rows.push(match res {
        Ok(o) => RowResult {
            op,
            case,
            nmse: nmse(&o.got, &o.want),
            tol,
            secs: o.secs,
            bytes: o.bytes,
            flops: o.flops,
            error: None,
        },
        Err(e) => RowResult {
            op,
            case,
            nmse: f64::INFINITY,
            tol,
            secs: None,
            bytes: 0.0,
            flops: 0.0,
            error: Some(e.to_string()),
        },
    });
}

/// The fixed cost of one op: `n` dependent one-element adds recorded as one step, then read. Returns
/// microseconds per op spent recording and in total (recording, submission, execution and the wait), from
/// the second of two identical steps, so whatever a backend keeps between steps is warm.
pub fn dispatch_cost<B: Backend>(be: &B, n: usize) -> Result<(f64, f64)> {
    let (a, b) = (be.upload(&[0.0])?, be.upload(&[1.0])?);
    let mut best = (f64::INFINITY, f64::INFINITY);
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..n {
            be.add(&a, &b, 1)?;
        }
        let rec = t.elapsed().as_secs_f64();
        be.read(&a)?;
        let total = t.elapsed().as_secs_f64();
        best = (best.0.min(rec), best.1.min(total));
    }
    Ok((best.0 * 1e6 / n as f64, best.1 * 1e6 / n as f64))
}

/// The table as text: one line per row, with GB/s and GFLOP/s when timed.
pub fn format_table(backend: &str, rows: &[RowResult]) -> String {
    let mut s = format!(
        "backend: {backend}\n{:<12} {:<70} {:>10} {:>8}  {:>9} {:>9} {:>9}\n",
        "op", "case", "nmse", "result", "us/call", "GB/s", "GFLOP/s"
    );
    for r in rows {
        let (us, gbs, gfs) = match r.secs {
            Some(t) => (
                format!("{:.1}", t * 1e6),
                format!("{:.2}", r.bytes / t / 1e9),
                if r.flops > 0.0 { format!("{:.2}", r.flops / t / 1e9) } else { "-".into() },
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let verdict = match &r.error {
            Some(e) => format!("ERROR: {e}"),
            None if r.passed() => "ok".into(),
            None => "FAIL".into(),
        };
        s +=
            &format!("{:<12} {:<70} {:>10.2e} {:>8}  {:>9} {:>9} {:>9}\n", r.op, r.case, r.nmse, verdict, us, gbs, gfs);
    }
    let failed = rows.iter().filter(|r| !r.passed()).count();
    s += &format!("{} passed, {} failed\n", rows.len() - failed, failed);
    s
}
