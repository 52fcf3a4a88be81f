//! Accumulates compile errors so that a user with three mistakes sees three errors, and
//! suggests the closest valid keyword for a misspelt one.

use proc_macro2::TokenStream;

/// Collects `syn::Error`s; `finish` reports them all at once.
#[derive(Default)]
pub(crate) struct Errors {
    errors: Vec<syn::Error>,
}

impl Errors {
    pub(crate) fn push(&mut self, e: syn::Error) {
        self.errors.push(e);
    }

    pub(crate) fn spanned(&mut self, tokens: impl quote::ToTokens, msg: impl core::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, msg));
    }

    pub(crate) fn at(&mut self, span: proc_macro2::Span, msg: impl core::fmt::Display) {
        self.push(syn::Error::new(span, msg));
    }

    /// Records the error of a fallible step and returns its value, if any.
    pub(crate) fn ok<T>(&mut self, r: syn::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(e);
                None
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.errors.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Every error combined into one, or `Ok` when there was none.
    pub(crate) fn finish(self) -> syn::Result<()> {
        let mut iter = self.errors.into_iter();
        match iter.next() {
            None => Ok(()),
            Some(mut first) => {
                for e in iter {
                    first.combine(e);
                }
                Err(first)
            }
        }
    }

    pub(crate) fn into_compile_errors(self) -> TokenStream {
        match self.finish() {
            Ok(()) => TokenStream::new(),
            Err(e) => e.to_compile_error(),
        }
    }
}

/// `expected one of ...` with a `did you mean` hint when a valid key is close.
pub(crate) fn unknown_key(what: &str, got: &str, valid: &[&str]) -> String {
    let list = valid
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match closest(got, valid) {
        Some(best) => {
            format!("unknown {what} `{got}`: did you mean `{best}`? (expected one of {list})")
        }
        None => format!("unknown {what} `{got}` (expected one of {list})"),
    }
}

/// The valid key nearest to `got` by edit distance, if near enough to be a likely typo.
pub(crate) fn closest<'a>(got: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|k| (levenshtein(got, k), *k))
        .filter(|(d, k)| *d <= (k.len().max(got.len()) / 3).clamp(1, 2) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edit distance counting an adjacent transposition as one edit (`retyr` is one from `retry`).
fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        d[i * w] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        let keys = ["max_attempts", "backoff", "max_delay", "jitter"];
        assert_eq!(closest("max_attempt", &keys), Some("max_attempts"));
        assert_eq!(closest("maxattempts", &keys), Some("max_attempts"));
        assert_eq!(closest("jiter", &keys), Some("jitter"));
        assert_eq!(closest("retyr", &["retry", "timeout"]), Some("retry"));
        assert_eq!(closest("colour", &keys), None);
        assert_eq!(
            unknown_key("retry key", "jiter", &keys),
            "unknown retry key `jiter`: did you mean `jitter`? (expected one of `max_attempts`, `backoff`, `max_delay`, `jitter`)"
        );
    }
}
