//! What `PostgresStore::execute_with` does to the caller's statement: count its placeholders and put
//! the message's insert in front of it.

/// The highest `$n` placeholder in `sql` (0 if none). Text that only looks like one (`'$5'` in a
/// string literal) counts too, which errs on the side of refusing the statement.
pub(super) fn highest_placeholder(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            rest[..digits].parse::<usize>().ok()
        })
        .max()
        .unwrap_or(0)
}

/// `statement` with the `WITH` query `query` (`name AS (...)`) in front: in the statement's own
/// `WITH` clause when it starts with one (`WITH` or `WITH RECURSIVE`), else in a new one.
pub(super) fn with_query_in_front(query: &str, statement: &str) -> String {
    let body = statement.trim_start();
    let keyword = |text: &str, word: &str| {
        text.get(..word.len()).is_some_and(|head| head.eq_ignore_ascii_case(word))
            && text[word.len()..].starts_with(|c: char| c.is_whitespace())
    };
    if !keyword(body, "WITH") {
        return format!("WITH {query} {body}");
    }
    let after_with = body[4..].trim_start();
    let clause_len =
        if keyword(after_with, "RECURSIVE") { body.len() - after_with.len() + "RECURSIVE".len() } else { "WITH".len() };
    format!("{} {query}, {}", &body[..clause_len], body[clause_len..].trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_counted() {
        assert_eq!(highest_placeholder("INSERT INTO t VALUES ($1, $12, $3)"), 12);
        assert_eq!(highest_placeholder("SELECT 1"), 0);
        assert_eq!(highest_placeholder("SELECT $$text$$, $tag$x$tag$, $"), 0);
        assert_eq!(highest_placeholder("SELECT 'costs $5'"), 5);
        assert_eq!(highest_placeholder("SELECT $99999999999999999999999"), 0, "no overflow panic");
    }

    #[test]
    fn the_message_query_goes_in_front_of_the_statement_or_into_its_with_clause() {
        let q = "m AS (INSERT ...)";
        assert_eq!(
            with_query_in_front(q, "  INSERT INTO t VALUES ($1)"),
            "WITH m AS (INSERT ...) INSERT INTO t VALUES ($1)"
        );
        assert_eq!(
            with_query_in_front(q, "with a AS (SELECT 1) SELECT * FROM a"),
            "with m AS (INSERT ...), a AS (SELECT 1) SELECT * FROM a"
        );
        assert_eq!(
            with_query_in_front(q, "WITH\n RECURSIVE r(n) AS (SELECT 1) SELECT n FROM r"),
            "WITH\n RECURSIVE m AS (INSERT ...), r(n) AS (SELECT 1) SELECT n FROM r"
        );
        assert_eq!(with_query_in_front(q, "WITHOUT_A_CLAUSE"), "WITH m AS (INSERT ...) WITHOUT_A_CLAUSE");
        assert_eq!(with_query_in_front(q, "Wé"), "WITH m AS (INSERT ...) Wé", "no panic on a multi-byte char");
        assert_eq!(
            with_query_in_front(q, "WITH"),
            "WITH m AS (INSERT ...) WITH",
            "a bare WITH is left to the server to refuse"
        );
    }
}
