//! Compile-fail cases: every invalid flow is rejected with an error on the user's tokens.
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test --test ui` and review
//! the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
