//! `/ui`: the operators' web page, served by the API itself so that there is nothing else to
//! deploy, and built into the binary so that it works air-gapped (no CDN, no font, no Node).
//!
//! The files under `services/ipam-api/ui/` are static: they hold no data, so they are the one
//! part of the API served without the bearer token ([`is_public`]). The page asks the operator
//! for the token and sends it on every API call, so what the page shows is exactly what the token
//! may read. A strict Content-Security-Policy keeps the page to its own origin and its own
//! scripts.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

use crate::error::ApiError;
use crate::routes;

/// One embedded file of the page.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// Every file of the page; `index.html` is also what `/ui/` answers.
const ASSETS: &[Asset] = &[
    Asset { name: "index.html", content_type: "text/html; charset=utf-8", body: include_bytes!("../ui/index.html") },
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("../ui/app.js") },
    Asset { name: "style.css", content_type: "text/css; charset=utf-8", body: include_bytes!("../ui/style.css") },
    Asset { name: "favicon.svg", content_type: "image/svg+xml", body: include_bytes!("../ui/favicon.svg") },
];

/// Scripts, styles, images and API calls from this origin only; no inline script, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Whether `path` is one of the page's static files, served without the token.
pub(crate) fn is_public(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The routes under `/ui`: `/ui` redirects to `/ui/`, which answers the page; `/ui/{file}` its
/// files. Any other method gets the API's JSON 405.
pub(crate) fn scope() -> actix_web::Scope {
    let only_get = |resource: actix_web::Resource| resource.default_service(web::to(routes::method_not_allowed));
    web::scope("/ui")
        .service(only_get(web::resource("").route(web::get().to(redirect))))
        .service(only_get(web::resource("/").route(web::get().to(index))))
        .service(only_get(web::resource("/{file}").route(web::get().to(asset))))
}

async fn redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect().insert_header((header::LOCATION, "/ui/")).finish()
}

async fn index() -> HttpResponse {
    serve(&ASSETS[0])
}

async fn asset(file: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let asset = ASSETS.iter().find(|asset| asset.name == file.as_str()).ok_or_else(|| {
        let shown: String = file.chars().take(64).collect();
        ApiError::not_found(format!("the web page has no file `{shown}`"))
    })?;
    Ok(serve(asset))
}

fn serve(asset: &Asset) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(asset.content_type)
        // The files change with the binary: always revalidate, never show a stale page.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_page_files_are_public() {
        assert!(is_public("/ui"));
        assert!(is_public("/ui/"));
        assert!(is_public("/ui/app.js"));
        assert!(!is_public("/uix"));
        assert!(!is_public("/v1/networks"));
        assert!(!is_public("/v1/ui/"));
    }

    #[test]
    fn the_page_loads_only_files_it_embeds() {
        let index = std::str::from_utf8(ASSETS[0].body).unwrap_or_default();
        for reference in index.split(['"', '\'']).filter(|part| part.starts_with("/ui/")) {
            let name = reference.trim_start_matches("/ui/");
            assert!(
                ASSETS.iter().any(|asset| asset.name == name),
                "index.html loads {reference}, which is not embedded"
            );
        }
        assert!(!index.contains("http://") && !index.contains("https://"), "the page loads nothing from elsewhere");
    }
}
