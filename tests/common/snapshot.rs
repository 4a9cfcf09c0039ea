//! Golden output as insta snapshots in tests/snapshots/ (how to update them:
//! tests/README.md).

/// Compares `actual` with the insta snapshot `tests/snapshots/NAME.snap` (one folder and
/// no test-file prefix, so a snapshot keeps its name when its test moves). On a
/// mismatch the test fails, and outside CI insta writes `NAME.snap.new` beside it for
/// review; `INSTA_UPDATE=always` accepts the new output instead (tests/README.md).
#[macro_export]
macro_rules! assert_golden {
    ($name:expr, $actual:expr) => {
        insta::with_settings!({prepend_module_to_snapshot => false, omit_expression => true}, {
            insta::assert_snapshot!($name, $actual);
        })
    };
}

/// The body of the insta snapshot `tests/snapshots/NAME.snap` (its `---` header left
/// out), for tests that read what another test recorded.
pub fn snapshot_body(name: &str) -> String {
    let rel = format!("tests/snapshots/{name}.snap");
    let text = super::fixtures::read_repo_file(&rel);
    let mut parts = text.splitn(3, "---\n");
    match (parts.next(), parts.next(), parts.next()) {
        (Some(""), Some(_header), Some(body)) => body.to_string(),
        _ => panic!("{rel}: no insta header (---, metadata, ---)"),
    }
}
