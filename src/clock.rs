//! Wall-clock time as the management features see it: Unix seconds, written and read as
//! RFC 3339 UTC text (`2026-11-21T13:00:00Z`) in the admin API, the audit log and the config.
//! Civil-date arithmetic after Howard Hinnant's `days_from_civil`, so no date crate is needed.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The first second of the UTC calendar month that holds `secs`, and of the next month.
pub fn month_bounds(secs: i64) -> (i64, i64) {
    let (y, m, _) = civil_from_days(secs.div_euclid(86_400));
    let start = days_from_civil(y, m, 1) * 86_400;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (start, days_from_civil(ny, nm, 1) * 86_400)
}

/// `2026-11-21T13:00:00Z`.
pub fn rfc3339(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The HTTP date (IMF-fixdate, RFC 9110 section 5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn imf_fixdate(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs.div_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let s = secs.rem_euclid(86_400);
    let weekday = DAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)];
    let month = MONTHS[usize::try_from(m - 1).unwrap_or(0).min(11)];
    format!(
        "{weekday}, {d:02} {month} {y:04} {:02}:{:02}:{:02} GMT",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Appends `2026-11-21T13:00:00.123Z` for `ms` since the epoch (digits written by hand: the
/// access log writes one per request). Years past 9999 are written with more digits.
pub fn push_rfc3339_ms(out: &mut Vec<u8>, ms: u64) {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    let mut digits = itoa::Buffer::new();
    let year = digits.format(y);
    out.extend(std::iter::repeat_n(b'0', 4usize.saturating_sub(year.len())));
    out.extend_from_slice(year.as_bytes());
    let two = |out: &mut Vec<u8>, sep: u8, n: i64| {
        out.push(sep);
        out.push(b'0' + (n / 10 % 10) as u8);
        out.push(b'0' + (n % 10) as u8);
    };
    two(out, b'-', m);
    two(out, b'-', d);
    two(out, b'T', s / 3600);
    two(out, b':', s / 60 % 60);
    two(out, b':', s % 60);
    crate::text::push_thousandths(out, ms);
    out.push(b'Z');
}

/// Reads `YYYY-MM-DDTHH:MM:SS` with an optional fraction and a `Z` or `±HH:MM` offset.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > days_in_month || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &b[19..];
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &rest[1 + digits..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hh = num_pair(*h1, *h2)?;
            let mm = num_pair(*m1, *m2)?;
            if hh > 23 || mm > 59 {
                return None;
            }
            let off = hh * 3600 + mm * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s.min(59) - offset)
}

fn num_pair(a: u8, b: u8) -> Option<i64> {
    (a.is_ascii_digit() && b.is_ascii_digit()).then(|| i64::from((a - b'0') * 10 + (b - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_bounds_follow_the_calendar() {
        let t = parse_rfc3339("2024-02-29T23:59:59Z").unwrap_or_default();
        assert_eq!(
            month_bounds(t),
            (
                parse_rfc3339("2024-02-01T00:00:00Z").unwrap_or_default(),
                parse_rfc3339("2024-03-01T00:00:00Z").unwrap_or_default()
            )
        );
        let dec = parse_rfc3339("2026-12-31T12:00:00Z").unwrap_or_default();
        assert_eq!(
            month_bounds(dec).1,
            parse_rfc3339("2027-01-01T00:00:00Z").unwrap_or_default()
        );
    }

    #[test]
    fn milliseconds_are_written_like_rfc3339_with_a_fraction() {
        for ms in [0, 7, 951_782_400_050, 1_795_000_000_123, 4_102_444_799_999] {
            let mut out = Vec::new();
            push_rfc3339_ms(&mut out, ms);
            let secs = i64::try_from(ms / 1000).unwrap_or_default();
            let whole = rfc3339(secs);
            let expected = format!("{}.{:03}Z", &whole[..whole.len() - 1], ms % 1000);
            assert_eq!(String::from_utf8_lossy(&out), expected);
        }
    }

    #[test]
    fn http_dates() {
        assert_eq!(imf_fixdate(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(imf_fixdate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(imf_fixdate(1_814_400_000), "Thu, 01 Jul 2027 00:00:00 GMT");
    }

    #[test]
    fn round_trips_and_offsets() {
        for secs in [0, 951_782_400, 1_795_000_000, 4_102_444_800, -86_400] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs), "{secs}");
        }
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(
            parse_rfc3339("2026-11-21T14:00:00+01:00"),
            parse_rfc3339("2026-11-21T13:00:00Z")
        );
        assert_eq!(
            parse_rfc3339("2026-11-21T13:00:00.123Z"),
            parse_rfc3339("2026-11-21T13:00:00Z")
        );
        for bad in [
            "",
            "2026-11-21",
            "2026-02-30T00:00:00Z",
            "2026-11-21T24:00:00Z",
            "2026-11-21T13:00:00",
            "2026-11-21T13:00:00+1:00",
            "2026-11-21T13:00:00.Z",
            "２０２６-11-21T13:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
