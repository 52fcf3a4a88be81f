//! Durations written as strings (`"250ms"`, `"5m"`, `"1h 30m"`), parsed at compile time with
//! `humantime`.

use core::time::Duration;

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Expr, ExprLit, Lit};

/// Parses a duration literal; zero is rejected (a zero timeout or delay cap means nothing).
pub(crate) fn parse(expr: &Expr, what: &str) -> syn::Result<Duration> {
    let Expr::Lit(ExprLit {
        lit: Lit::Str(s), ..
    }) = expr
    else {
        return Err(syn::Error::new_spanned(
            expr,
            format!("{what} must be a duration string such as \"250ms\", \"30s\" or \"5m\""),
        ));
    };
    parse_str(&s.value()).map_err(|msg| syn::Error::new(s.span(), format!("{what}: {msg}")))
}

fn parse_str(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err(format!("`{text}` is zero; give a positive duration")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "`{text}` is not a duration ({e}); write a number and a unit, such as \"250ms\", \"30s\", \"5m\" or \"1h 30m\""
        )),
    }
}

/// The tokens of a `core::time::Duration` constant.
pub(crate) fn to_tokens(d: Duration) -> TokenStream {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    quote!(::core::time::Duration::new(#secs, #nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse_str("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_str("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_str("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_str("0s").unwrap_err().contains("is zero"));
        assert!(
            parse_str("10 parsecs")
                .unwrap_err()
                .contains("is not a duration")
        );
        assert!(parse_str("").is_err());
    }
}
