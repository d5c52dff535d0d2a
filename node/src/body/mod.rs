//! Body wrappers for the data path, each adding one concern to whatever
//! body it wraps, the way tower and linkerd layer `http_body::Body`.
//!
//! Every wrapper here implements [`Body`] for any inner `B: Body`, so the
//! proxy composes exactly the layers a request needs and the plain proxied
//! path pays for nothing else:
//!
//! - [`ReadTimeout`] fails a body that pauses longer than a limit between
//!   two frames;
//! - [`Guarded`] tells a guard when the body ends or fails and keeps it
//!   until the body is dropped (the upstream connection goes back to its
//!   pool at the end, the target stops counting as in flight on drop);
//! - [`Full`] is a body the gateway made in one piece (an error, a
//!   plugin's answer, a replaced body, an upgrade's empty body);
//! - [`request`] holds the client's request body on its way upstream:
//!   kept for a retry until an attempt reads it, size-limited and
//!   progress-stamped while it streams.
//!
//! Wrappers owned by other concerns live with them and follow the same
//! shape: the plugin chain's body and log phases in
//! [`crate::plugin::PluginBody`], the access-log and metrics byte count in
//! [`crate::telemetry::LoggedBody`]. Which layers a response gets, and in
//! which order, is decided in `proxy`; nothing here imports `proxy`, the
//! router, the snapshot or the plugins.

mod full;
mod guard;
pub mod request;
mod timeout;

pub use full::Full;
pub use guard::{BodyGuard, Guarded};
pub use request::{BodySlot, BodySource, ClientBody, ClientBodyError, ReqBody};
pub use timeout::{ReadTimeout, ReadTimeoutError};

/// Errors carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(doc)]
use http_body::Body;
