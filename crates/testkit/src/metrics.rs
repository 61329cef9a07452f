//! Reading a Prometheus text exposition (`/metrics` of the server or of a
//! worker).

/// The value of one series (`name` or `name{labels}`, exactly as rendered).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// The sum of every series of a counter; `None` when it is not there.
pub fn counter_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_sums() {
        let text = "# TYPE a counter\na{x=\"1\"} 2\na{x=\"2\"} 3\nab 9\nb 1.5\n";
        assert_eq!(metric_value(text, "b"), Some(1.5));
        assert_eq!(metric_value(text, "a{x=\"2\"}"), Some(3.0));
        assert_eq!(counter_sum(text, "a"), Some(5.0), "ab is another counter");
        assert_eq!(counter_sum(text, "c"), None);
    }
}
