//! Prices: an amount in the minor units of the sale's ISO 4217 currency
//! (`price_cents` in the API: cents of USD or EUR, yen of JPY, which has no
//! minor unit, fils of BHD, which has three), and the plain text of a price
//! that pages show before their script formats it in the shopper's locale.
//!
//! The table of currencies and their minor units is the `iso_currency`
//! crate's (ISO 4217); codes without a minor unit (gold, test codes) are
//! refused, since a price in them cannot be written as an integer amount.

use std::fmt;

/// A sale's currency: an ISO 4217 code with a defined number of minor units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    /// The currency of a sale created without one (and of sales stored
    /// before sales had a currency).
    pub const DEFAULT: Currency = Currency(iso_currency::Currency::USD);

    /// `EUR`, `JPY`, …: three upper-case letters of ISO 4217 whose minor
    /// units are defined; anything else is `None`.
    pub fn parse(code: &str) -> Option<Currency> {
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let c = iso_currency::Currency::from_code(code)?;
        c.exponent()?;
        Some(Currency(c))
    }

    /// As stored in Redis: absent or unreadable is [`Currency::DEFAULT`].
    pub fn stored(code: Option<&str>) -> Currency {
        code.and_then(Currency::parse).unwrap_or(Currency::DEFAULT)
    }

    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// Digits after the decimal point: 2 for EUR, 0 for JPY, 3 for BHD.
    pub fn minor_digits(self) -> u32 {
        u32::from(self.0.exponent().unwrap_or(2))
    }

    /// `29900` EUR → `299.00 EUR`, `1500` JPY → `1500 JPY`: the same for
    /// every shopper, so pages stay cacheable; the page script replaces it
    /// with the shopper's locale's format.
    pub fn plain(self, minor: i64) -> String {
        let digits = self.minor_digits();
        let sign = if minor < 0 { "-" } else { "" };
        let abs = minor.unsigned_abs();
        if digits == 0 {
            return format!("{sign}{abs} {}", self.code());
        }
        let unit = 10u64.pow(digits);
        format!(
            "{sign}{}.{:0width$} {}",
            abs / unit,
            abs % unit,
            self.code(),
            width = digits as usize
        )
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Longest `image_url` accepted.
pub const MAX_IMAGE_URL: usize = 2048;

/// An image address a page may show: an absolute `https://` or `http://`
/// URL with a host, or a path on this site (`/static/…`); at most
/// [`MAX_IMAGE_URL`] bytes, no spaces, quotes or angle brackets (askama
/// escapes them anyway; refusing them keeps the stored value plain).
pub fn valid_image_url(s: &str) -> bool {
    if s.is_empty()
        || s.len() > MAX_IMAGE_URL
        || s.bytes()
            .any(|b| b.is_ascii_control() || matches!(b, b' ' | b'"' | b'\'' | b'<' | b'>' | b'\\'))
    {
        return false;
    }
    if s.starts_with('/') {
        return !s.starts_with("//");
    }
    match url::Url::parse(s) {
        Ok(u) => {
            matches!(u.scheme(), "https" | "http") && u.host_str().is_some_and(|h| !h.is_empty())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_minor_units() {
        assert_eq!(Currency::parse("EUR").map(Currency::minor_digits), Some(2));
        assert_eq!(Currency::parse("JPY").map(Currency::minor_digits), Some(0));
        assert_eq!(Currency::parse("BHD").map(Currency::minor_digits), Some(3));
        assert_eq!(Currency::parse("eur"), None, "upper case only");
        assert_eq!(Currency::parse("XAU"), None, "gold has no minor unit");
        assert_eq!(Currency::parse("ABC"), None);
        assert_eq!(Currency::parse("EURO"), None);
        assert_eq!(Currency::stored(None), Currency::DEFAULT);
        assert_eq!(Currency::stored(Some("JPY")).code(), "JPY");
    }

    #[test]
    fn plain_text_of_a_price() {
        let c = |s| Currency::parse(s).unwrap();
        assert_eq!(c("EUR").plain(29900), "299.00 EUR");
        assert_eq!(c("USD").plain(5), "0.05 USD");
        assert_eq!(c("JPY").plain(1500), "1500 JPY");
        assert_eq!(c("BHD").plain(1234), "1.234 BHD");
        assert_eq!(c("EUR").plain(0), "0.00 EUR");
    }

    #[test]
    fn image_addresses() {
        assert!(valid_image_url("https://cdn.example.com/tv.jpg"));
        assert!(valid_image_url("http://img.example/tv.png?w=320"));
        assert!(valid_image_url("/static/img/product.svg"));
        assert!(!valid_image_url("//evil.example/x.png"));
        assert!(!valid_image_url("javascript:alert(1)"));
        assert!(!valid_image_url("data:image/png;base64,AAAA"));
        assert!(!valid_image_url("https://"));
        assert!(!valid_image_url("https://a.example/x y.png"));
        assert!(!valid_image_url("https://a.example/\"x.png"));
        assert!(!valid_image_url(""));
        assert!(!valid_image_url(&format!(
            "https://a.example/{}",
            "x".repeat(2048)
        )));
    }
}
