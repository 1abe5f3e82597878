//! Sizes and durations as people write and read them: `10GB`, `512MiB`, `24h`, `2h30m` in,
//! `1.704GB` and `3 hours ago` out (the forms `docker buildx du` prints).
//!
//! Sizes without `i` are decimal (`kB` = 1000 bytes, `GB` = 10^9), with `i` binary (`KiB` =
//! 1024), as the SI and IEC say and as `kiln du` prints them; buildx reads every unit as
//! binary. Durations are Go's `time.ParseDuration` syntax, which buildx's `until=` takes.

use std::time::Duration;

/// Why a size or a duration could not be read. The text is bounded: a value longer than
/// [`SHOWN_CHARS`] is cut when quoted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error(
        "`{value}` is not a size: {why} (e.g. 10GB, 512MiB, 1.5TB; units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
    )]
    Size { value: String, why: String },
    #[error("`{value}` is not a duration: {why} (e.g. 24h, 2h30m, 90s; units h, m, s, ms, us, ns)")]
    Duration { value: String, why: String },
}

/// How much of a bad value an error quotes.
const SHOWN_CHARS: usize = 64;

fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_string(),
    }
}

/// Splits `12.5GB` into `12.5` and `GB`.
fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    s.split_at(end)
}

/// Reads a size: a number (decimals allowed) and an optional unit, case-insensitive, with an
/// optional space between them.
pub fn parse_size(value: &str) -> Result<u64, UnitError> {
    let bad = |why: &str| UnitError::Size {
        value: shown(value),
        why: why.to_string(),
    };
    let (number, unit) = split_number(value.trim());
    if number.is_empty() {
        return Err(bad("it does not start with a number"));
    }
    let number: f64 = number.parse().map_err(|_| bad("the number is malformed"))?;
    let unit = unit.trim_start();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000_u64.pow(2),
        "g" | "gb" => 1000_u64.pow(3),
        "t" | "tb" => 1000_u64.pow(4),
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => return Err(bad(&format!("unknown unit `{}`", shown(unit)))),
    };
    let bytes = number * multiplier as f64;
    if bytes >= u64::MAX as f64 {
        return Err(bad("it is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Reads a duration as Go's `time.ParseDuration` does (a sequence of numbers with units, no
/// sign: a negative duration means nothing here).
pub fn parse_duration(value: &str) -> Result<Duration, UnitError> {
    let bad = |why: &str| UnitError::Duration {
        value: shown(value),
        why: why.to_string(),
    };
    let mut rest = value.trim();
    if rest.is_empty() {
        return Err(bad("it is empty"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0.0_f64;
    while !rest.is_empty() {
        let (number, after) = split_number(rest);
        if number.is_empty() {
            return Err(bad("expected a number"));
        }
        let number: f64 = number.parse().map_err(|_| bad("a number is malformed"))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            "" => return Err(bad("a number has no unit")),
            _ => return Err(bad(&format!("unknown unit `{}`", shown(unit)))),
        };
        total += number * seconds;
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad("it is too long"))
}

/// A size as `docker buildx du` prints it: decimal units, four significant digits
/// (`0B`, `512B`, `8.224kB`, `1.704GB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let decimals = match value {
        v if v >= 100.0 => 1,
        v if v >= 10.0 => 2,
        _ => 3,
    };
    let mut text = format!("{value:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
}

/// How long ago something was, as `docker buildx du` shows it (`36 minutes ago`).
pub fn human_ago(seconds: i64) -> String {
    let s = seconds.max(0);
    let text = match s {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".to_string(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 2 * 3600 => "About an hour".to_string(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s if s < 7 * 2 * 86_400 => format!("{} days", s / 86_400),
        s if s < 30 * 3 * 86_400 => format!("{} weeks", s / (7 * 86_400)),
        s if s < 365 * 2 * 86_400 => format!("{} months", s / (30 * 86_400)),
        s => format!("{} years", s / (365 * 86_400)),
    };
    format!("{text} ago")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_with_decimal_and_binary_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("10gb"), Ok(10_000_000_000));
        assert_eq!(parse_size("10 GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5kB"), Ok(1500));
        assert_eq!(parse_size("2k"), Ok(2000));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        let err = parse_size("10XB").unwrap_err().to_string();
        assert!(
            err.contains("`10XB` is not a size: unknown unit `XB`"),
            "{err}"
        );
        assert!(parse_size("GB").is_err());
        assert!(parse_size("1.2.3GB").is_err());
        assert!(parse_size("-1GB").is_err());
        assert!(parse_size("99999999999TB").is_err());
        let long = "9".repeat(10) + &"X".repeat(10_000);
        assert!(parse_size(&long).unwrap_err().to_string().len() < 400);
    }

    #[test]
    fn durations_are_read_as_go_reads_them() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2h30m"), Ok(Duration::from_secs(9000)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        let err = parse_duration("soon").unwrap_err().to_string();
        assert!(err.contains("`soon` is not a duration"), "{err}");
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("7d").is_err());
        assert!(parse_duration("-1h").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_and_ages_print_as_buildx_prints_them() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(8224), "8.224kB");
        assert_eq!(human_size(318_000_000), "318MB");
        assert_eq!(human_size(811_700_000), "811.7MB");
        assert_eq!(human_size(1_704_000_000), "1.704GB");
        assert_eq!(human_size(10_360_000_000), "10.36GB");
        assert_eq!(human_size(999_999), "1MB");
        assert_eq!(human_ago(0), "Less than a second ago");
        assert_eq!(human_ago(36 * 60), "36 minutes ago");
        assert_eq!(human_ago(43 * 3600), "43 hours ago");
        assert_eq!(human_ago(13 * 86_400), "13 days ago");
        assert_eq!(human_ago(15 * 86_400), "2 weeks ago");
    }
}
