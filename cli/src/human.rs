//! Numbers for people: sizes and ages.

/// `1536` -> `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// How long ago a Unix time was: `just now`, `5 minutes ago`, `3 days ago`.
pub fn ago(unix_secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ago_from(now, unix_secs)
}

fn ago_from(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    let (n, unit) = match s {
        0..=9 => return "just now".to_owned(),
        10..=119 => (s, "second"),
        120..=7199 => (s / 60, "minute"),
        7200..=172_799 => (s / 3600, "hour"),
        _ => (s / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_table() {
        assert_eq!(super::bytes(0), "0 B");
        assert_eq!(super::bytes(1023), "1023 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn ago_table() {
        let t = 1_000_000;
        assert_eq!(super::ago_from(t, t), "just now");
        assert_eq!(super::ago_from(t, t + 50), "just now", "clock skew");
        assert_eq!(super::ago_from(t + 45, t), "45 seconds ago");
        assert_eq!(super::ago_from(t + 300, t), "5 minutes ago");
        assert_eq!(super::ago_from(t + 3 * 3600, t), "3 hours ago");
        assert_eq!(super::ago_from(t + 86_400 * 9, t), "9 days ago");
    }
}
