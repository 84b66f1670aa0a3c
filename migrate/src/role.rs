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

/// Env var holding this slot's SidecarSet version, as the Kruise webhook injects it into every sidecar container
/// of a `HotUpgrade` SidecarSet. Exposed so tests and tools can set it without repeating the string.
pub const VERSION_ENV: &str = "SIDECARSET_VERSION";
/// Env var holding the other slot's SidecarSet version: comparing it with [`VERSION_ENV`] is the only way a
/// container can tell, at start, whether it is the upgraded slot or the one being replaced.
pub const VERSION_ALT_ENV: &str = "SIDECARSET_VERSION_ALT";

/// What this process should do at start.
///
/// Kruise starts the new slot next to the running one and tells neither which is which except through the env,
/// so every instance decides here, before binding anything, whether to bind its ports, inherit them, or keep away
/// from them. Getting it wrong means binding next to a live instance (an `EADDRINUSE`, or with `SO_REUSEPORT` a
/// silent split of its traffic) or an upgrade that waits for a predecessor that is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Bind every listener itself: there is no predecessor (first start, pod restart, or not under Kruise).
    Fresh,
    /// Take the listening sockets from the live instance on the uds dir with [`crate::Takeover`]; it binds fresh
    /// if there is none, since after a crash or a pod restart the env still says "upgraded".
    Takeover,
    /// Bind nothing and wait for SIGTERM: this slot runs the empty image, or was superseded and restarted
    /// (binding now would fight the newer slot for its ports).
    Idle,
}

impl Role {
    /// Lower-case name (`fresh`, `takeover`, `idle`): a stable string for logs and status documents, where the
    /// `Debug` form would change with a rename.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Fresh => "fresh",
            Role::Takeover => "takeover",
            Role::Idle => "idle",
        }
    }

    /// Reads the role from this process's environment: what a server calls first, before binding anything.
    ///
    /// The env is read once; Kruise never changes it while the container runs, so the answer describes the
    /// moment the container started (see the module docs for why `Takeover` is only a hint). A malformed value is
    /// an error rather than a guess: treating garbage as "no Kruise" would bind fresh next to a live
    /// predecessor.
    ///
    /// ```
    /// use baton_migrate::Role;
    ///
    /// # std::env::set_var("SIDECARSET_VERSION", "7340032");
    /// # std::env::set_var("SIDECARSET_VERSION_ALT", "1");
    /// // In the upgraded slot Kruise sets SIDECARSET_VERSION=7340032, SIDECARSET_VERSION_ALT=1.
    /// match Role::from_env()? {
    ///     Role::Fresh => { /* bind every listener */ }
    ///     Role::Takeover => { /* Takeover::start, then receive the predecessor's listeners */ }
    ///     Role::Idle => { /* bind nothing; wait for SIGTERM */ }
    /// }
    /// # assert_eq!(Role::from_env()?, Role::Takeover);
    /// # Ok::<(), baton_migrate::RoleError>(())
    /// ```
    pub fn from_env() -> Result<Role, RoleError> {
        let version = std::env::var(VERSION_ENV).ok();
        let alt = std::env::var(VERSION_ALT_ENV).ok();
        Role::detect(version.as_deref(), alt.as_deref())
    }

    /// Decides the role from the raw values of `SIDECARSET_VERSION` and `SIDECARSET_VERSION_ALT`.
    /// An empty string counts as unset; anything else must be an unsigned integer.
    ///
    /// The pure half of [`Role::from_env`], so the decision table can be tested (and reused by tools that read
    /// the env of another process) without touching this process's environment.
    ///
    /// ```
    /// use baton_migrate::Role;
    ///
    /// // Slot 1 created; slot 2 holds the empty image.
    /// assert_eq!(Role::detect(Some("1"), Some("0"))?, Role::Fresh);
    /// assert_eq!(Role::detect(Some("0"), Some("1"))?, Role::Idle);
    /// // v1 -> v2: slot 2 gets the new version and takes over; slot 1, if it restarts now, must idle.
    /// assert_eq!(Role::detect(Some("7340032"), Some("1"))?, Role::Takeover);
    /// assert_eq!(Role::detect(Some("1"), Some("7340032"))?, Role::Idle);
    /// // Not under Kruise at all.
    /// assert_eq!(Role::detect(None, None)?, Role::Fresh);
    /// // Garbage is an error naming the variable, never a guess.
    /// assert_eq!(Role::detect(Some("v2"), Some("1")).unwrap_err().var, "SIDECARSET_VERSION");
    /// # Ok::<(), baton_migrate::RoleError>(())
    /// ```
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
///
/// Kept apart from [`crate::HandoffError`] because it happens before any handoff, and a caller usually treats it
/// as a configuration error (exit 2, say) rather than a failed upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not an unsigned integer (OpenKruise sets it to a SidecarSet resourceVersion, or 0 for an empty slot)")]
pub struct RoleError {
    /// The env var's name, so the message points at what to fix.
    pub var: &'static str,
    /// Its value (trimmed), as found.
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
