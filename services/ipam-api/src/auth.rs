//! Who may call the API: bearer tokens, each with a role, several at once.
//!
//! Several tokens are accepted at the same time so that one can be rotated without a gap: add the
//! new one, move the clients over, remove the old one (tokens are read at start; a removed token
//! is refused from the next start). A `read` token is for dashboards and the web page, a `write`
//! token also publishes events (the engine). A token may carry an expiry, after which it gets
//! `401 token_expired` rather than a plain `401 unauthorized`, so its owner knows what to fix.
//!
//! Every configured token is compared with the one given, in constant time ([`subtle`]) and
//! without stopping at the first match, so the answer's timing says nothing about the tokens.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Every `GET`: the read model, history, the event stream, metrics, the web page's data.
    Read,
    /// Everything `read` may do, and `POST /v1/events`.
    Write,
}

impl Role {
    /// The role a request needs: `write` for anything but a read (`GET`, `HEAD`).
    pub fn needed_for(method: &actix_web::http::Method) -> Role {
        use actix_web::http::Method;
        if method == Method::GET || method == Method::HEAD { Role::Read } else { Role::Write }
    }
}

/// One token as configured (`[[api-tokens]]` in the TOML file): the secret itself or a file
/// holding it, a role, and an optional expiry.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TokenEntry {
    /// The secret; prefer `token-file`, since secrets belong in files.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the secret (a mounted secret, a systemd credential): read at start, one
    /// trailing newline dropped.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    pub role: Role,
    /// After this instant (RFC 3339, e.g. `2027-01-31T00:00:00Z`) the token gets 401
    /// `token_expired`.
    #[serde(default, deserialize_with = "rfc3339")]
    pub expires: Option<DateTime<Utc>>,
}

/// An RFC 3339 instant, written as a string or as a TOML date-time (which the `toml` crate hands
/// over as a map of one string), so that `expires = 2027-01-31T00:00:00Z` works unquoted too.
fn rfc3339<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Toml(std::collections::BTreeMap<String, String>),
    }
    let text = match Option::<Written>::deserialize(deserializer)? {
        None => return Ok(None),
        Some(Written::Text(text)) => text,
        Some(Written::Toml(map)) => map.into_values().next().unwrap_or_default(),
    };
    DateTime::parse_from_rfc3339(&text).map(|instant| Some(instant.with_timezone(&Utc))).map_err(|error| {
        serde::de::Error::custom(format!(
            "expires {text:?} is not an RFC 3339 instant such as 2027-01-31T00:00:00Z: {error}"
        ))
    })
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs and `config show`.
        f.debug_struct("TokenEntry")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("role", &self.role)
            .field("expires", &self.expires)
            .finish()
    }
}

/// Why the configured tokens cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// An entry names both `token` and `token-file`, or neither.
    #[error("api token #{index}: give exactly one of `token` and `token-file`")]
    SecretSource { index: usize },
    /// The `token-file` could not be read.
    #[error("api token #{index}: reading token-file {path}: {source}")]
    File { index: usize, path: PathBuf, source: std::io::Error },
    /// The secret is empty (an empty file, most likely), which would let anyone in.
    #[error("api token #{index}: the token is empty")]
    Empty { index: usize },
}

/// A token ready to compare.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    secret: Vec<u8>,
    /// What it lets its holder do.
    pub role: Role,
    /// When it stops working, if ever.
    pub expires: Option<DateTime<Utc>>,
}

impl ApiToken {
    /// A token with this secret and role that never expires.
    pub fn new(secret: impl Into<String>, role: Role) -> ApiToken {
        ApiToken { secret: secret.into().into_bytes(), role, expires: None }
    }

    /// The same token, refused after `expires`.
    pub fn expiring(self, expires: DateTime<Utc>) -> ApiToken {
        ApiToken { expires: Some(expires), ..self }
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken").field("role", &self.role).field("expires", &self.expires).finish_non_exhaustive()
    }
}

/// The configured tokens, their files read now. (The single `api-token` setting is
/// [`crate::ApiConfig::bearer_token`], a write token that never expires.)
pub fn load_tokens(entries: &[TokenEntry]) -> Result<Vec<ApiToken>, TokenError> {
    let mut tokens = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let index = index + 1;
        let secret = match (&entry.token, &entry.token_file) {
            (Some(token), None) => token.clone(),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|source| TokenError::File {
                    index,
                    path: path.clone(),
                    source,
                })?;
                let text = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
                text.to_owned()
            }
            _ => return Err(TokenError::SecretSource { index }),
        };
        if secret.trim().is_empty() {
            return Err(TokenError::Empty { index });
        }
        tokens.push(ApiToken { secret: secret.into_bytes(), role: entry.role, expires: entry.expires });
    }
    Ok(tokens)
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header, or a token nobody configured: 401 `unauthorized`.
    Unknown,
    /// A configured token past its expiry: 401 `token_expired`.
    Expired,
    /// A valid token whose role is too small for the request: 403 `forbidden`.
    Forbidden,
}

/// Whether a request carrying `given` (the bearer credentials, if any) may do what `needed`
/// allows at `now`. With no tokens configured everyone may do everything.
pub fn check(tokens: &[ApiToken], given: Option<&str>, needed: Role, now: DateTime<Utc>) -> Result<(), Denied> {
    if tokens.is_empty() {
        return Ok(());
    }
    let given = given.ok_or(Denied::Unknown)?.as_bytes();
    // Every token is compared, whatever the earlier ones gave.
    let mut found: Option<&ApiToken> = None;
    for token in tokens {
        if bool::from(token.secret.as_slice().ct_eq(given)) && found.is_none() {
            found = Some(token);
        }
    }
    let token = found.ok_or(Denied::Unknown)?;
    if token.expires.is_some_and(|expires| now >= expires) {
        return Err(Denied::Expired);
    }
    if token.role < needed {
        return Err(Denied::Forbidden);
    }
    Ok(())
}

/// The credentials of `Authorization: Bearer <token>`, if the header says that.
pub fn bearer(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    let given = headers.get(actix_web::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = given.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("RFC 3339")
    }

    #[test]
    fn a_read_token_reads_but_may_not_write_and_a_write_token_does_both() {
        let tokens = [ApiToken::new("r", Role::Read), ApiToken::new("w", Role::Write)];
        let now = at("2026-01-01T00:00:00Z");
        assert_eq!(check(&tokens, Some("r"), Role::Read, now), Ok(()));
        assert_eq!(check(&tokens, Some("r"), Role::Write, now), Err(Denied::Forbidden));
        assert_eq!(check(&tokens, Some("w"), Role::Read, now), Ok(()));
        assert_eq!(check(&tokens, Some("w"), Role::Write, now), Ok(()));
    }

    #[test]
    fn a_missing_or_unknown_token_is_unknown_and_no_tokens_lets_everyone_in() {
        let tokens = [ApiToken::new("secret", Role::Write)];
        let now = at("2026-01-01T00:00:00Z");
        assert_eq!(check(&tokens, None, Role::Read, now), Err(Denied::Unknown));
        assert_eq!(check(&tokens, Some("secre"), Role::Read, now), Err(Denied::Unknown));
        assert_eq!(check(&tokens, Some("secrets"), Role::Read, now), Err(Denied::Unknown));
        assert_eq!(check(&[], None, Role::Write, now), Ok(()));
    }

    #[test]
    fn a_token_works_until_its_expiry_and_is_expired_from_then_on() {
        let tokens = [ApiToken::new("t", Role::Write).expiring(at("2026-06-01T00:00:00Z"))];
        assert_eq!(check(&tokens, Some("t"), Role::Write, at("2026-05-31T23:59:59Z")), Ok(()));
        assert_eq!(check(&tokens, Some("t"), Role::Read, at("2026-06-01T00:00:00Z")), Err(Denied::Expired));
    }

    #[test]
    fn file_secrets_lose_their_trailing_newline_and_keep_their_role() {
        let dir = std::env::temp_dir().join(format!("ipam-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").expect("write");
        let entries = [TokenEntry { token: None, token_file: Some(file), role: Role::Read, expires: None }];
        let tokens = load_tokens(&entries).expect("tokens");
        let now = at("2026-01-01T00:00:00Z");
        assert_eq!(check(&tokens, Some("from-file"), Role::Read, now), Ok(()));
        assert_eq!(check(&tokens, Some("from-file"), Role::Write, now), Err(Denied::Forbidden));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn expires_is_read_from_a_string_and_a_bad_one_is_named() {
        let entry: TokenEntry =
            serde_json::from_str(r#"{"token": "t", "role": "read", "expires": "2027-01-31T01:00:00+01:00"}"#)
                .expect("entry");
        assert_eq!(entry.expires, Some(at("2027-01-31T00:00:00Z")));
        let error = serde_json::from_str::<TokenEntry>(r#"{"token": "t", "role": "read", "expires": "tomorrow"}"#)
            .expect_err("not an instant");
        assert!(error.to_string().contains("\"tomorrow\" is not an RFC 3339 instant"), "{error}");
    }

    #[test]
    fn an_entry_needs_exactly_one_secret_and_a_non_empty_one() {
        let both =
            TokenEntry { token: Some("a".into()), token_file: Some("f".into()), role: Role::Read, expires: None };
        assert!(matches!(load_tokens(&[both]), Err(TokenError::SecretSource { index: 1 })));
        let neither = TokenEntry { token: None, token_file: None, role: Role::Read, expires: None };
        assert!(matches!(load_tokens(&[neither]), Err(TokenError::SecretSource { index: 1 })));
        let empty = TokenEntry { token: Some(" ".into()), token_file: None, role: Role::Read, expires: None };
        assert!(matches!(load_tokens(&[empty]), Err(TokenError::Empty { index: 1 })));
        let missing =
            TokenEntry { token: None, token_file: Some("/nonexistent/t".into()), role: Role::Read, expires: None };
        assert!(matches!(load_tokens(&[missing]), Err(TokenError::File { index: 1, .. })));
    }
}
