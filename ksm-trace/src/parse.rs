//! The values a user types, parsed in one place: durations (`30s`, `2m`, `500ms`), sizes
//! (`256M`, `1G`, `4k`) and `on`/`off`. The command line (as clap value parsers) and workload
//! specs (`procs:4,wait=2s`, `vms:2,mem=256M`) both use these, so they accept and refuse the same
//! text in the same words. Errors say what was wrong and what to give instead; the caller names
//! the option. Nothing here panics, whatever the input.
use std::time::Duration;

/// The longest duration accepted anywhere: far beyond any recording, and small enough that
/// `Instant::now() + d` cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The largest size accepted (1 TiB).
pub const MAX_SIZE: u64 = 1 << 40;

/// `30s`, `2m`, `500ms`, `1h30m`, or a plain number of seconds (`1.5`): longer than zero and at
/// most [`MAX_DURATION`].
pub fn duration(text: &str) -> Result<Duration, String> {
    let d = match text.parse::<f64>() {
        Ok(secs) if secs.is_nan() || secs <= 0.0 => {
            return Err("not longer than zero: give e.g. 30s, 2m or 500ms".into());
        }
        // Infinite and huge values are refused here, before they reach Duration (which panics on
        // them in from_secs_f64).
        Ok(secs) if secs > MAX_DURATION.as_secs_f64() => return Err(too_long()),
        Ok(secs) => Duration::from_secs_f64(secs),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("not a duration ({e}): give e.g. 30s, 2m or 500ms"))?,
    };
    if d.is_zero() {
        return Err("not longer than zero: give e.g. 30s, 2m or 500ms".into());
    }
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

fn too_long() -> String {
    "longer than 30 days: give at most 30d (e.g. 30s, 2m or 12h)".into()
}

/// `256M`, `1G`, `4k` (powers of 1024), or a number of bytes: 1 byte to [`MAX_SIZE`].
pub fn size(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let out_of_range = || "out of range: give 1 byte to 1024G".to_owned();
    let n: u64 = digits.parse().map_err(|e: std::num::ParseIntError| {
        if *e.kind() == std::num::IntErrorKind::PosOverflow {
            out_of_range()
        } else {
            "not a size: give e.g. 256M, 1G or 4k".to_owned()
        }
    })?;
    let bytes = n
        .checked_shl(shift)
        .filter(|b| b >> shift == n && *b <= MAX_SIZE);
    match bytes {
        Some(b) if b > 0 => Ok(b),
        _ => Err(out_of_range()),
    }
}

/// `on` or `off`.
pub fn on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("give on or off".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_units_and_plain_seconds() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("30d"), Ok(MAX_DURATION));
        assert_eq!(duration("2592000"), Ok(MAX_DURATION));
    }

    #[test]
    fn durations_not_longer_than_zero_are_refused() {
        for text in ["0", "0s", "-3", "-0", "NaN", "nan", "-inf", "0.0"] {
            let err = duration(text).unwrap_err();
            assert!(err.contains("not longer than zero"), "{text}: {err}");
        }
        // Rounds to no time at all.
        assert!(duration("1e-10").unwrap_err().contains("longer than zero"));
    }

    #[test]
    fn durations_beyond_30_days_are_refused_without_panicking() {
        for text in [
            "1e19",
            "1e20",
            "inf",
            "infinity",
            "1e308",
            "2592000.001",
            "31d",
            "1000000000000h",
            "18446744073709551615s",
        ] {
            let err = duration(text).unwrap_err();
            assert!(
                err.contains("longer than 30 days") || err.contains("not a duration"),
                "{text}: {err}"
            );
        }
        assert!(duration("1e20").unwrap_err().contains("give at most 30d"));
    }

    #[test]
    fn durations_that_are_not_durations_say_what_to_give() {
        for text in ["soon", "", "-2s", "10 parsecs", "s"] {
            let err = duration(text).unwrap_err();
            assert!(err.contains("not a duration"), "{text}: {err}");
            assert!(err.contains("give e.g. 30s"), "{text}: {err}");
        }
    }

    #[test]
    fn sizes_in_units_and_bytes() {
        assert_eq!(size("100M"), Ok(100 << 20));
        assert_eq!(size("256m"), Ok(256 << 20));
        assert_eq!(size("1G"), Ok(1 << 30));
        assert_eq!(size("4k"), Ok(4096));
        assert_eq!(size("4K"), Ok(4096));
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("1"), Ok(1));
        assert_eq!(size("1024G"), Ok(MAX_SIZE));
    }

    #[test]
    fn sizes_out_of_range_or_malformed_are_refused() {
        for text in [
            "0",
            "0M",
            "1025G",
            "1099511627777",
            "99999999999G",
            // Overflows the shift: 2^54 MiB.
            "18014398509481984M",
            // Does not fit u64 at all.
            "18446744073709551616",
            "99999999999999999999G",
        ] {
            let err = size(text).unwrap_err();
            assert!(
                err.contains("out of range: give 1 byte to 1024G"),
                "{text}: {err}"
            );
        }
        for text in ["", "M", "-1M", "1.5G", "1T", "lots", "1 G", "1é"] {
            assert!(size(text).unwrap_err().contains("not a size"), "{text}");
        }
    }

    #[test]
    fn on_and_off() {
        assert_eq!(on_off("on"), Ok(true));
        assert_eq!(on_off("off"), Ok(false));
        assert_eq!(on_off("yes"), Err("give on or off".into()));
        assert!(on_off("ON").is_err());
    }
}
