//! Durations in config (`with = "crate::config::duration"`): humantime's
//! format (`5s`, `1h30m`), refusing anything longer than [`MAX`] where it
//! is read, so a typo such as `99999999999h` is an error naming its field
//! rather than a timer set for eleven million years. Fields whose sane
//! range is narrower (timeouts: [`MAX_TIMEOUT`]) are checked again by
//! their section's validation.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest duration any config field takes: one year.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);
/// The longest timeout or interval (connect, read, idle, health checks,
/// drain): one day.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A duration or an optional one.
pub trait Bounded {
    /// The duration, when there is one.
    fn duration(&self) -> Option<Duration>;
}

impl Bounded for Duration {
    fn duration(&self) -> Option<Duration> {
        Some(*self)
    }
}

impl Bounded for Option<Duration> {
    fn duration(&self) -> Option<Duration> {
        *self
    }
}

/// Writes a duration as humantime does.
///
/// # Errors
/// Those of the serializer.
pub fn serialize<T, S>(d: &T, s: S) -> Result<S::Ok, S::Error>
where
    for<'a> humantime_serde::Serde<&'a T>: Serialize,
    S: Serializer,
{
    humantime_serde::serialize(d, s)
}

/// Reads a duration as humantime does, refusing one over [`MAX`].
///
/// # Errors
/// A value that is not a duration, or one longer than [`MAX`].
pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
where
    T: Bounded,
    humantime_serde::Serde<T>: Deserialize<'de>,
    D: Deserializer<'de>,
{
    let v: T = humantime_serde::deserialize(d)?;
    if let Some(x) = v.duration()
        && x > MAX
    {
        return Err(serde::de::Error::custom(format!(
            "{} is longer than {}, the longest duration weir takes",
            humantime::format_duration(x),
            humantime::format_duration(MAX)
        )));
    }
    Ok(v)
}

/// Pushes a problem at `path` when `d` is longer than `max`.
pub(crate) fn check_max(p: &mut super::Problems, path: String, d: Duration, max: Duration) {
    if d > max {
        p.push(
            path,
            format!(
                "{} is too long: at most {}",
                humantime::format_duration(d),
                humantime::format_duration(max)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct T {
        #[serde(with = "super")]
        d: std::time::Duration,
        #[serde(default, with = "super")]
        o: Option<std::time::Duration>,
    }

    #[test]
    fn an_absurd_duration_is_refused_where_it_is_read() {
        let e = serde_yaml_ng::from_str::<T>("d: 99999999999h").unwrap_err();
        assert!(e.to_string().contains("longest duration"), "{e}");
        let e = serde_yaml_ng::from_str::<T>("d: 1s\no: 400days").unwrap_err();
        assert!(e.to_string().contains("longest duration"), "{e}");
        let t = serde_yaml_ng::from_str::<T>("d: 1h\no: 30days").unwrap();
        assert_eq!(t.d, std::time::Duration::from_secs(3600));
        assert_eq!(t.o, Some(std::time::Duration::from_secs(30 * 86400)));
    }
}
