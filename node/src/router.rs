//! Route matching. (Being written; see the module docs once filled.)

use crate::config::{ConfigErrors, Problems, RouteConfig};

/// The parts of a request the router looks at.
pub struct RequestView<'a> {
    /// Request method.
    pub method: &'a http::Method,
    /// Host without port, lowercased by the caller; `None` when absent.
    pub host: Option<&'a str>,
    /// Path, not percent-decoded.
    pub path: &'a str,
    /// Raw query string without `?`.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
}

/// A successful lookup.
pub struct RouteMatch<'r, T> {
    /// The value stored with the route.
    pub value: &'r T,
    /// Bytes at the start of the path to remove before proxying (a
    /// stripped version prefix such as `/v2`); 0 when nothing is stripped.
    pub strip_len: usize,
}

/// An immutable table of routes.
pub struct Router<T> {
    routes: Vec<T>,
}

impl<T> Router<T> {
    /// Compiles routes; `routes` pairs each config with its payload.
    pub fn build(routes: Vec<(&RouteConfig, T)>) -> Result<Self, ConfigErrors> {
        Ok(Router {
            routes: routes.into_iter().map(|(_, t)| t).collect(),
        })
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Finds the best route for a request.
    pub fn lookup<'r>(&'r self, _req: &RequestView<'_>) -> Option<RouteMatch<'r, T>> {
        self.routes.first().map(|value| RouteMatch {
            value,
            strip_len: 0,
        })
    }
}

/// Checks a route's match conditions (paths, hosts, methods, regexes).
pub(crate) fn validate_route(_r: &RouteConfig, _at: &str, _p: &mut Problems) {}
