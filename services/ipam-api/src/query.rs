//! Query parameters, read strictly: each endpoint names the ones it takes, and an unknown or
//! repeated one is a client's mistake (a limit or filter it would otherwise think applied), so it
//! gets `invalid_query` instead of being ignored. Also the cursor pagination every list shares.

use std::collections::BTreeMap;

use actix_web::web;

use crate::error::ApiError;

/// The parameters every read takes: `position=true` adds the read model's position to the answer,
/// `after` (with an optional `wait`) waits until the read model shows a position token.
pub const READ_PARAMETERS: [&str; 3] = ["position", "after", "wait"];
/// What a list takes besides [`READ_PARAMETERS`].
pub const PAGE_PARAMETERS: [&str; 2] = ["limit", "cursor"];
/// The page size when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest page.
pub const MAX_LIMIT: usize = 10_000;

/// The parameters of one request, by name.
#[derive(Debug, Default)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// Reads `query`, refusing a parameter outside `allowed` or one given twice.
    pub fn parse(query: &str, allowed: &[&str]) -> Result<Params, ApiError> {
        let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
            .map_err(|e| ApiError::bad_request("invalid_query", format!("the query does not parse: {e}")))?;
        let mut params = BTreeMap::new();
        for (name, value) in pairs.into_inner() {
            let shown: String = name.chars().take(40).collect();
            if !allowed.contains(&name.as_str()) {
                let message = if allowed.is_empty() {
                    format!("this endpoint takes no query parameters, got `{shown}`")
                } else {
                    format!("this endpoint takes no `{shown}` (it takes {})", allowed.join(", "))
                };
                return Err(ApiError::bad_request("invalid_query", message).with_field(name));
            }
            if params.insert(name.clone(), value).is_some() {
                return Err(
                    ApiError::bad_request("invalid_query", format!("`{shown}` is given twice")).with_field(name)
                );
            }
        }
        Ok(Params(params))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `position=true|false` (false by default).
    pub fn position(&self) -> Result<bool, ApiError> {
        match self.get("position") {
            None | Some("false") => Ok(false),
            Some("true") | Some("") => Ok(true),
            Some(other) => Err(ApiError::bad_request(
                "invalid_query",
                format!("`position` is `true` or `false`, not `{}`", other.chars().take(40).collect::<String>()),
            )
            .with_field("position")),
        }
    }

    /// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
    pub fn limit(&self) -> Result<usize, ApiError> {
        let Some(text) = self.get("limit") else { return Ok(DEFAULT_LIMIT) };
        match text.parse::<usize>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
            _ => Err(ApiError::bad_request(
                "invalid_limit",
                format!(
                    "`limit` is a whole number from 1 to {MAX_LIMIT}, not `{}`",
                    text.chars().take(40).collect::<String>()
                ),
            )
            .with_field("limit")),
        }
    }

    /// `cursor`, parsed by `parse` (the key after which the page starts).
    pub fn cursor<T>(&self, parse: impl FnOnce(&str) -> Option<T>) -> Result<Option<T>, ApiError> {
        let Some(text) = self.get("cursor") else { return Ok(None) };
        parse(text).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                format!(
                    "`{}` is not a cursor of this list: pass back the `next` of a page",
                    text.chars().take(64).collect::<String>()
                ),
            )
            .with_field("cursor")
        })
    }

    /// A filter parsed by `parse`, refused as `invalid_filter` when it does not parse.
    pub fn filter<T>(
        &self,
        name: &str,
        what: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ApiError> {
        let Some(text) = self.get(name) else { return Ok(None) };
        parse(text).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_filter",
                format!("`{name}` is {what}, not `{}`", text.chars().take(64).collect::<String>()),
            )
            .with_field(name)
        })
    }
}

/// One page of a list: the items and the cursor of the next page (null on the last).
pub fn page<K: Clone, T>(items: impl Iterator<Item = (K, T)>, limit: usize) -> (Vec<T>, Option<K>) {
    let mut out = Vec::with_capacity(limit.min(1024));
    let mut last = None;
    for (key, item) in items {
        if out.len() == limit {
            return (out, last);
        }
        last = Some(key);
        out.push(item);
    }
    (out, None)
}
