//! Which part this process plays in an OpenKruise SidecarSet hot upgrade, read from the two env vars the
//! SidecarSet webhook injects into both sidecar slots.
//!
//! The env is fixed when a container starts (it never changes while the process runs), so it describes the
//! moment of start only. Kruise writes `SIDECARSET_VERSION` (this slot's version) and `SIDECARSET_VERSION_ALT`
//! (the other slot's) from pod annotations; the values are SidecarSet resourceVersions, `0` for an empty slot.
//!
//! | VERSION / ALT            | role       | why                                                        |
//! |--------------------------|------------|------------------------------------------------------------|
//! | both unset               | `Fresh`    | not running under Kruise hot upgrade                        |
//! | VERSION = 0              | `Idle`     | this slot runs the empty image (or a superseded container) |
//! | ALT unset or 0           | `Fresh`    | no other version: first start, or reset partner            |
//! | VERSION > ALT            | `Takeover` | this slot was just upgraded: take over from the other      |
//! | VERSION < ALT            | `Idle`     | a newer slot exists: this one was superseded               |
//! | VERSION = ALT (not 0)    | `Takeover` | not produced by Kruise; take over if a live peer exists    |
//!
//! The env is a hint, not proof: after a crash or a pod restart the "old" peer may not exist, which is why
//! `Takeover` falls back to binding fresh when no live instance holds the uds dir.

use std::fmt;

/// Env var holding this slot's SidecarSet version.
pub const VERSION_ENV: &str = "SIDECARSET_VERSION";
/// Env var holding the other slot's SidecarSet version.
pub const VERSION_ALT_ENV: &str = "SIDECARSET_VERSION_ALT";

/// What this process should do at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Bind every listener itself: there is no predecessor.
    Fresh,
    /// Take the listening sockets from the live instance on the uds dir (bind fresh if there is none).
    Takeover,
    /// Bind nothing and wait for SIGTERM: this slot is empty or superseded.
    Idle,
}

impl Role {
    /// Lower-case name used in logs and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Fresh => "fresh",
            Role::Takeover => "takeover",
            Role::Idle => "idle",
        }
    }

    /// Reads the role from this process's environment.
    pub fn from_env() -> Result<Role, RoleError> {
        let version = std::env::var(VERSION_ENV).ok();
        let alt = std::env::var(VERSION_ALT_ENV).ok();
        Role::detect(version.as_deref(), alt.as_deref())
    }

    /// Decides the role from the raw values of `SIDECARSET_VERSION` and `SIDECARSET_VERSION_ALT`.
    /// An empty string counts as unset; anything else must be an unsigned integer.
    pub fn detect(version: Option<&str>, alt: Option<&str>) -> Result<Role, RoleError> {
        let version = parse(VERSION_ENV, version)?;
        let alt = parse(VERSION_ALT_ENV, alt)?;
        Ok(match (version, alt) {
            (Some(0), _) => Role::Idle,
            (None, _) => Role::Fresh,
            (Some(_), None | Some(0)) => Role::Fresh,
            (Some(v), Some(a)) if v < a => Role::Idle,
            (Some(_), Some(_)) => Role::Takeover,
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn parse(var: &'static str, value: Option<&str>) -> Result<Option<u64>, RoleError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(raw) => raw.parse::<u64>().map(Some).map_err(|_| RoleError {
            var,
            value: raw.to_string(),
        }),
    }
}

/// A Kruise version env var that is not an unsigned integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not an unsigned integer (OpenKruise sets it to a SidecarSet resourceVersion, or 0 for an empty slot)")]
pub struct RoleError {
    /// The env var's name.
    pub var: &'static str,
    /// Its value.
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const R2: &str = "7340032";
    const R3: &str = "7340571";

    fn role(v: Option<&str>, a: Option<&str>) -> Role {
        Role::detect(v, a).expect("valid env")
    }

    // Every cell of the env table in the Kruise HotUpgrade facts: (step, slot, running or restarted).
    #[test]
    fn t0_create() {
        assert_eq!(role(Some("1"), Some("0")), Role::Fresh, "-1 running / restarted");
        assert_eq!(role(Some("0"), Some("1")), Role::Idle, "-2 empty");
    }

    #[test]
    fn t1_upgrade_v1_to_v2() {
        assert_eq!(role(Some("1"), Some("0")), Role::Fresh, "-1 running, stale env");
        assert_eq!(role(Some(R2), Some("1")), Role::Takeover, "-2 takes over");
        assert_eq!(role(Some("1"), Some(R2)), Role::Idle, "-1 restarted now must idle");
        assert_eq!(role(Some(R2), Some("1")), Role::Takeover, "-2 restarted now");
    }

    #[test]
    fn t2_reset_slot_1() {
        assert_eq!(role(Some("0"), Some(R2)), Role::Idle, "-1 empty");
        assert_eq!(role(Some(R2), Some("1")), Role::Takeover, "-2 running, stale env");
        assert_eq!(role(Some(R2), Some("0")), Role::Fresh, "-2 restarted now binds fresh");
    }

    #[test]
    fn t3_upgrade_v2_to_v3() {
        assert_eq!(role(Some(R3), Some(R2)), Role::Takeover, "-1 takes over");
        assert_eq!(role(Some(R2), Some("1")), Role::Takeover, "-2 running, stale env");
        assert_eq!(role(Some(R2), Some(R3)), Role::Idle, "-2 restarted now must idle");
    }

    #[test]
    fn t4_reset_slot_2() {
        assert_eq!(role(Some(R3), Some(R2)), Role::Takeover, "-1 running, stale env");
        assert_eq!(role(Some("0"), Some(R3)), Role::Idle, "-2 empty");
        assert_eq!(role(Some(R3), Some("0")), Role::Fresh, "-1 restarted now binds fresh");
    }

    #[test]
    fn outside_kruise() {
        assert_eq!(role(None, None), Role::Fresh);
        assert_eq!(role(Some(""), Some("")), Role::Fresh);
        assert_eq!(role(Some("5"), None), Role::Fresh);
        assert_eq!(role(None, Some("5")), Role::Fresh);
        assert_eq!(role(Some(" 7 "), Some("3")), Role::Takeover);
        assert_eq!(role(Some("4"), Some("4")), Role::Takeover);
    }

    #[test]
    fn non_numeric_is_an_error_naming_the_var() {
        let err = Role::detect(Some("v2"), Some("1")).unwrap_err();
        assert_eq!(err.var, VERSION_ENV);
        assert!(err.to_string().contains("SIDECARSET_VERSION=\"v2\""), "{err}");
        let err = Role::detect(Some("2"), Some("-1")).unwrap_err();
        assert_eq!(err.var, VERSION_ALT_ENV);
        assert!(Role::detect(Some("99999999999999999999999"), None).is_err());
    }
}
