//! The command line of the load tools: `--flag value` pairs; anything wrong prints the tool's usage and exits 2.

use std::str::FromStr;

/// The `--flag value` pairs of this process's arguments.
pub struct Flags {
    tool: &'static str,
    usage: &'static str,
    raw: std::vec::IntoIter<String>,
}

impl Flags {
    /// This process's arguments, for `tool`, whose usage line (after "usage: ") is `usage`.
    pub fn from_env(tool: &'static str, usage: &'static str) -> Flags {
        let raw: Vec<String> = std::env::args().skip(1).collect();
        Flags {
            tool,
            usage,
            raw: raw.into_iter(),
        }
    }

    /// The next `--flag value` pair; a flag without a value is an error.
    pub fn next_pair(&mut self) -> Option<(String, String)> {
        let flag = self.raw.next()?;
        match self.raw.next() {
            Some(val) => Some((flag, val)),
            None => self.fail(&format!("{flag} needs a value")),
        }
    }

    /// `val`, the value of `flag`, parsed; a value that does not parse is an error.
    pub fn parse<T: FromStr>(&self, flag: &str, val: &str) -> T {
        val.parse()
            .unwrap_or_else(|_| self.fail(&format!("{flag}: bad value {val}")))
    }

    /// Prints `msg` and the usage, and exits 2.
    pub fn fail(&self, msg: &str) -> ! {
        eprintln!("{}: {msg}", self.tool);
        eprintln!("usage: {}", self.usage);
        std::process::exit(2);
    }
}
