//! Config problems: one [`ConfigProblem`] (field path, `line:column` when
//! known, reason), every problem of a document as [`ConfigErrors`], and the
//! [`Problems`] collector the checks push into. Every layer that checks
//! config (here, and the router, consumer and plugin checks run by
//! `compile`) reports through these types.

use std::fmt;

/// One problem in a config document, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted path to the field, e.g. `routes[2].paths[0]`.
    pub path: String,
    /// `line:column` in the source, when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((l, c)) => write!(f, "{l}:{c}: {}: {}", self.path, self.reason),
            None => write!(f, "{}: {}", self.path, self.reason),
        }
    }
}

/// All problems found in a config document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// A single problem.
    pub(crate) fn one(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigProblem {
            path: path.into(),
            location: None,
            reason: reason.into(),
        }])
    }
}

/// Collects problems while validating.
#[derive(Default)]
pub(crate) struct Problems(pub Vec<ConfigProblem>);

impl Problems {
    pub(crate) fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigProblem {
            path: path.into(),
            location: None,
            reason: reason.into(),
        });
    }

    /// `Ok` when nothing was found, else every problem found.
    pub(crate) fn into_result(self) -> Result<(), ConfigErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.0))
        }
    }
}
