//! Keeping secrets out of `Debug` output, logs and errors.

/// `url` with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match password_span(url) {
        Some((start, end)) => format!("{}***{}", &url[..start], &url[end..]),
        None => url.to_owned(),
    }
}

fn password_span(url: &str) -> Option<(usize, usize)> {
    let after_scheme = url.find("://")? + 3;
    let authority_end = url[after_scheme..].find(['/', '?', '#']).map_or(url.len(), |i| after_scheme + i);
    let at = url[after_scheme..authority_end].rfind('@')? + after_scheme;
    let colon = url[after_scheme..at].find(':')? + after_scheme;
    Some((colon + 1, at))
}

/// `text` with the password of `url` (if any) removed.
pub fn scrub(text: &str, url: &str) -> String {
    match password_span(url) {
        Some((start, end)) if end > start => text.replace(&url[start..end], "***"),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:s3cret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
        assert_eq!(redact_url("amqp://u:p@ss@h/v?x=@"), "amqp://u:***@h/v?x=@");
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(scrub("bad password s3cret", "postgres://u:s3cret@h/db"), "bad password ***");
    }
}
