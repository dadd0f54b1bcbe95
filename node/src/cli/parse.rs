//! The CLI's own value syntax: `name=value` lists, `TOPIC[:P,P…]` and points in time.

use super::CliError;

/// `name=value` items, each argument possibly a comma-separated list of them; a value in
/// brackets may hold commas (`cleanup.policy=[compact,delete]`, sent as `compact,delete`).
pub fn config_pairs(args: &[String]) -> Result<Vec<(String, String)>, CliError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for arg in args {
        for item in split_outside_brackets(arg) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let Some((name, value)) = item.split_once('=') else {
                return Err(CliError::failed(format!(
                    "config {item:?} is not name=value"
                )));
            };
            let name = name.trim();
            if name.is_empty() {
                return Err(CliError::failed(format!("config {item:?} has no name")));
            }
            let value = value.trim();
            let value = value
                .strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .unwrap_or(value);
            if pairs.iter().any(|(n, _)| n == name) {
                return Err(CliError::failed(format!("config {name:?} is given twice")));
            }
            pairs.push((name.to_string(), value.to_string()));
        }
    }
    Ok(pairs)
}

fn split_outside_brackets(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `TOPIC` (`None`: every partition) or `TOPIC:P[,P…]`. Topic names cannot hold ':'.
pub fn topic_partitions(arg: &str) -> Result<(String, Option<Vec<i32>>), CliError> {
    let bad = || CliError::failed(format!("--topic {arg:?} is not TOPIC or TOPIC:P[,P…]"));
    match arg.split_once(':') {
        None if !arg.is_empty() => Ok((arg.to_string(), None)),
        None => Err(bad()),
        Some((topic, list)) => {
            if topic.is_empty() {
                return Err(bad());
            }
            let mut partitions = Vec::new();
            for p in list.split(',') {
                let p: i32 = p.trim().parse().map_err(|_| bad())?;
                if p < 0 {
                    return Err(bad());
                }
                if !partitions.contains(&p) {
                    partitions.push(p);
                }
            }
            partitions.sort_unstable();
            Ok((topic.to_string(), Some(partitions)))
        }
    }
}

/// Milliseconds since the Unix epoch of `s`: an integer, or RFC 3339 with a zone
/// (`2026-11-20T08:00:00Z`, `2026-11-20T08:00:00.250+01:00`; a space for the `T` is fine).
/// A time without a zone is refused rather than guessed.
pub fn parse_datetime_ms(s: &str) -> Result<i64, CliError> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        if ms < 0 {
            return Err(CliError::failed(format!(
                "--to-datetime {ms} is before 1970"
            )));
        }
        return Ok(ms);
    }
    let bad = |why: &str| {
        CliError::failed(format!(
            "--to-datetime {s:?}: {why} (want e.g. 2026-11-20T08:00:00Z, 2026-11-20T09:00:00+01:00 or milliseconds since the epoch)"
        ))
    };
    let b = s.as_bytes();
    if b.len() < 19 || !b.is_ascii() {
        return Err(bad("too short"));
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, CliError> {
        let part = &s[range];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse::<i64>().map_err(|_| bad("not a number"))
        } else {
            Err(bad("not a date and time"))
        }
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad("not YYYY-MM-DDTHH:MM:SS"));
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time"));
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad("empty fraction of a second"));
        }
        let ms_digits = &fraction[..digits.min(3)];
        millis = ms_digits.parse::<i64>().map_err(|_| bad("bad fraction"))?
            * 10i64.pow(3 - ms_digits.len() as u32);
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        "" => return Err(bad("no time zone")),
        zone => {
            let zb = zone.as_bytes();
            if zb.len() != 6 || !matches!(zb[0], b'+' | b'-') || zb[3] != b':' {
                return Err(bad("the zone is not Z or ±HH:MM"));
            }
            let digits = |r: std::ops::Range<usize>| {
                zone[r]
                    .parse::<i64>()
                    .map_err(|_| bad("the zone is not Z or ±HH:MM"))
            };
            let (h, m) = (digits(1..3)?, digits(4..6)?);
            if h > 23 || m > 59 {
                return Err(bad("no such zone offset"));
            }
            let minutes = h * 60 + m;
            if zb[0] == b'-' {
                -minutes
            } else {
                minutes
            }
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    if seconds < 0 {
        return Err(bad("before 1970"));
    }
    Ok(seconds * 1_000 + millis)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes() {
        assert_eq!(parse_datetime_ms("0").unwrap(), 0);
        assert_eq!(
            parse_datetime_ms("1700000000000").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(parse_datetime_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        // `date -u -d 2023-11-14T22:13:20Z +%s` = 1700000000.
        assert_eq!(
            parse_datetime_ms("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_datetime_ms("2023-11-14T23:13:20.5+01:00").unwrap(),
            1_700_000_000_500
        );
        assert_eq!(
            parse_datetime_ms("2023-11-14 17:13:20.123456-05:00").unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_datetime_ms("2024-02-29T00:00:00Z").unwrap(),
            1_709_164_800_000
        );
        for bad in [
            "",
            "-5",
            "yesterday",
            "2023-11-14T22:13:20",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20+1",
            "2023-11-14T22:13:20.Z",
            "1969-12-31T23:59:59Z",
            "2023-11-14T22:13:20Zjunk",
            "２０２３-11-14T22:13:20Z",
        ] {
            assert!(parse_datetime_ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn configs_and_topic_partitions() {
        let args = vec![
            "retention.ms=1000,segment.bytes=2048".to_string(),
            "cleanup.policy=[compact,delete]".to_string(),
        ];
        assert_eq!(
            config_pairs(&args).unwrap(),
            vec![
                ("retention.ms".into(), "1000".into()),
                ("segment.bytes".into(), "2048".into()),
                ("cleanup.policy".into(), "compact,delete".into()),
            ]
        );
        assert!(config_pairs(&["novalue".to_string()]).is_err());
        assert!(config_pairs(&["=1".to_string()]).is_err());
        assert!(config_pairs(&["a=1,a=2".to_string()]).is_err());
        assert_eq!(topic_partitions("t").unwrap(), ("t".into(), None));
        assert_eq!(
            topic_partitions("t:2,0,2").unwrap(),
            ("t".into(), Some(vec![0, 2]))
        );
        for bad in ["", ":1", "t:", "t:x", "t:-1", "t:1,,2"] {
            assert!(topic_partitions(bad).is_err(), "{bad:?}");
        }
    }
}
