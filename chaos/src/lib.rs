//! weir's chaos harness: multi-node cluster launcher, fault proxies, load
//! generator, scenarios and invariant checks.
//!
//! Empty for now; the membership issue starts it. Single-node process
//! launching for tests lives in `tests/support` until then.
#![forbid(unsafe_code)]
