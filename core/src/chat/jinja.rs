//! Python/transformers compatibility for the chat-template environment: the globals
//! `raise_exception` and `strftime_now`, a small UTC `strftime`, and a `tojson` filter that writes
//! exactly what Python's `json.dumps` writes (transformers overrides Jinja's HTML-escaping `tojson`).

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value as JValue, ValueKind};
use minijinja::{Error as JError, ErrorKind};

pub(super) fn raise_exception(msg: String) -> std::result::Result<JValue, JError> {
    Err(JError::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(fmt)`: the current UTC time. `SystemTime::now` panics on wasm32-unknown-unknown,
/// so there (and if the clock is before 1970) it formats 2024-07-26, the Llama templates' own
/// fallback date.
pub(super) fn strftime_now(fmt: String) -> String {
    #[allow(unused_mut)]
    let mut secs = 1_721_952_000;
    #[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        secs = d.as_secs() as i64;
    }
    strftime(&fmt, secs)
}

/// A small C/Python `strftime` over a UTC Unix time (the codes chat templates use).
pub fn strftime(fmt: &str, unix_secs: i64) -> String {
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = unix_secs.div_euclid(86400);
    let sod = unix_secs.rem_euclid(86400);
    let (h, mi, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let wday = (days + 3).rem_euclid(7) as usize; // 0 = Monday; 1970-01-01 was a Thursday
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{y}"),
            Some('y') => write!(out, "{:02}", y.rem_euclid(100)),
            Some('m') => write!(out, "{m:02}"),
            Some('d') => write!(out, "{d:02}"),
            Some('e') => write!(out, "{d:2}"),
            Some('j') => write!(out, "{yday:03}"),
            Some('H') => write!(out, "{h:02}"),
            Some('I') => write!(out, "{:02}", if h % 12 == 0 { 12 } else { h % 12 }),
            Some('p') => write!(out, "{}", if h < 12 { "AM" } else { "PM" }),
            Some('M') => write!(out, "{mi:02}"),
            Some('S') => write!(out, "{s:02}"),
            Some('b') | Some('h') => write!(out, "{}", &month[..3]),
            Some('B') => write!(out, "{month}"),
            Some('a') => write!(out, "{}", &DAYS[wday][..3]),
            Some('A') => write!(out, "{}", DAYS[wday]),
            Some('F') => write!(out, "{y}-{m:02}-{d:02}"),
            Some('T') => write!(out, "{h:02}:{mi:02}:{s:02}"),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

// ---------------------------------------------------------------------------------------------
// tojson: Python's json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)

pub(super) fn tojson(value: JValue, indent: Option<JValue>, kwargs: Kwargs) -> std::result::Result<JValue, JError> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<JValue>>("indent")?,
    };
    let indent: Option<String> = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match (v.as_str(), v.as_i64()) {
            (Some(s), _) if s.len() > MAX_INDENT => return Err(indent_too_wide()),
            (Some(s), _) => Some(s.to_string()),
            (None, Some(n)) if n > MAX_INDENT as i64 => return Err(indent_too_wide()),
            (None, Some(n)) => Some(" ".repeat(n.max(0) as usize)),
            _ => return Err(JError::new(ErrorKind::InvalidOperation, "tojson: indent must be an int or a string")),
        },
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let (item_sep, key_sep) = match kwargs.get::<Option<JValue>>("separators")? {
        Some(v) if !v.is_none() => {
            let parts: Vec<String> = v.try_iter()?.map(|p| p.as_str().unwrap_or_default().to_string()).collect();
            match parts.as_slice() {
                [a, b] => (a.clone(), b.clone()),
                _ => return Err(JError::new(ErrorKind::InvalidOperation, "tojson: separators must be a pair")),
            }
        }
        _ => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
    };
    kwargs.assert_all_used()?;
    let opts = JsonOpts { indent, item_sep, key_sep, ensure_ascii, sort_keys };
    let mut out = String::new();
    write_json(&value, &opts, 0, &mut out)?;
    Ok(JValue::from(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn write_json(v: &JValue, o: &JsonOpts, level: usize, out: &mut String) -> std::result::Result<(), JError> {
    if level > MAX_DEPTH {
        return Err(too_deep());
    }
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
        ValueKind::Number => out.push_str(&py_float(f64::try_from(v.clone()).unwrap_or(f64::NAN))),
        ValueKind::String => write_str(v.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Map => {
            let mut items: Vec<(String, JValue)> = Vec::new();
            for k in v.try_iter()? {
                let val = v.get_item(&k)?;
                let key = match k.kind() {
                    ValueKind::String => k.as_str().unwrap_or_default().to_string(),
                    _ => {
                        let mut s = String::new();
                        write_json(&k, o, 0, &mut s)?;
                        s
                    }
                };
                items.push((key, val));
            }
            if o.sort_keys {
                items.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, '{', '}', items.len(), o, level, |i, out| {
                write_str(&items[i].0, o.ensure_ascii, out);
                out.push_str(&o.key_sep);
                write_json(&items[i].1, o, level + 1, out)
            })?;
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<JValue> = v.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), o, level, |i, out| write_json(&items[i], o, level + 1, out))?;
        }
        kind => {
            return Err(JError::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a value of kind {kind}"),
            ))
        }
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    open: char,
    close: char,
    n: usize,
    o: &JsonOpts,
    level: usize,
    mut item: impl FnMut(usize, &mut String) -> std::result::Result<(), JError>,
) -> std::result::Result<(), JError> {
    out.push(open);
    if n == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..n {
        if i > 0 {
            out.push_str(&o.item_sep);
        }
        if let Some(ind) = &o.indent {
            out.push('\n');
            out.push_str(&ind.repeat(level + 1));
        }
        item(i, out)?;
    }
    if let Some(ind) = &o.indent {
        out.push('\n');
        out.push_str(&ind.repeat(level));
    }
    out.push(close);
    Ok(())
}

fn write_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form outside 1e-4 ≤ |x| < 1e16.
fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    let sci = format!("{:e}", x.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                format!("{sign}{digits}{}.0", "0".repeat(int_len - digits.len()))
            } else {
                format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// The widest `tojson` indent: every nested line repeats it, so a huge one is a way to ask for unbounded memory.
const MAX_INDENT: usize = 64;

fn indent_too_wide() -> JError {
    JError::new(ErrorKind::InvalidOperation, format!("tojson: indent wider than {MAX_INDENT}"))
}

/// How deeply nested a value a template may print or serialise: far beyond any message or tool schema, and
/// short of the stack. A namespace stored inside itself (`{% set ns.n = ns %}`) is infinitely deep, and
/// minijinja would format it until the stack overflows.
pub(super) const MAX_DEPTH: usize = 128;

fn too_deep() -> JError {
    JError::new(
        ErrorKind::InvalidOperation,
        format!("a value nested more than {MAX_DEPTH} deep (does it contain itself?)"),
    )
}

/// The chat templates' formatter for `{{ value }}`: minijinja's, after [`check_depth`].
pub(super) fn formatter(
    out: &mut minijinja::Output<'_>,
    state: &minijinja::State<'_, '_>,
    value: &JValue,
) -> std::result::Result<(), JError> {
    check_depth(value)?;
    minijinja::escape_formatter(out, state, value)
}

/// The `string` filter, after [`check_depth`].
pub(super) fn string(state: &minijinja::State<'_, '_>, value: &JValue) -> std::result::Result<JValue, JError> {
    check_depth(value)?;
    minijinja::filters::string(state, value)
}

/// The `join` filter, after [`check_depth`].
pub(super) fn join(
    state: &minijinja::State<'_, '_>,
    value: &JValue,
    joiner: Option<minijinja::value::StringInput<'_>>,
) -> std::result::Result<JValue, JError> {
    check_depth(value)?;
    minijinja::filters::join(state, value, joiner)
}

/// Refuses a map or list nested past [`MAX_DEPTH`] (at most 100,000 items are looked at; a larger value is
/// left to the output and memory limits).
fn check_depth(value: &JValue) -> std::result::Result<(), JError> {
    fn check(v: &JValue, depth: usize, budget: &mut usize) -> std::result::Result<(), JError> {
        if !matches!(v.kind(), ValueKind::Map | ValueKind::Seq) {
            return Ok(());
        }
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        let Ok(items) = v.try_iter() else { return Ok(()) };
        for k in items {
            if *budget == 0 {
                return Ok(());
            }
            *budget -= 1;
            let item = if v.kind() == ValueKind::Map { v.get_item(&k).unwrap_or_default() } else { k };
            check(&item, depth + 1, budget)?;
        }
        Ok(())
    }
    check(value, 0, &mut 100_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        let cases = [
            (1.0, "1.0"),
            (2.5, "2.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-0.0, "-0.0"),
            (1.5e300, "1.5e+300"),
            (0.1, "0.1"),
            (123456789.123, "123456789.123"),
            (-3.25e-7, "-3.25e-07"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float(x), want, "{x}");
        }
    }

    #[test]
    fn strftime_matches_python() {
        assert_eq!(strftime("%d %b %Y", 1_721_952_000), "26 Jul 2024");
        assert_eq!(
            strftime("%a %A %b %B %d %e %H %I %M %S %p %y %Y %j %m %%", 951_782_400 + 3723),
            "Tue Tuesday Feb February 29 29 01 01 02 03 AM 00 2000 060 02 %"
        );
    }
}
