//! Configuration problems: what is wrong, where, and what the operator should do.
//!
//! Every check in this module tree reports into a [`Problems`] collector instead of returning
//! early, so `check-config` and a failed reload show every problem at once.

use std::fmt;
use std::path::{Path, PathBuf};

/// One configuration problem (an error or a warning).
///
/// `value` is the offending value when it is safe to show: it is always `None` for API keys,
/// `fallback=` parameters and anything else that may hold a secret (proxy URLs are shown with
/// their credentials removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is about (for an environment variable: the file it overrides).
    pub file: PathBuf,
    /// The key path in the Agent's notation (`logs_config.delegated_auth.org_uuid`,
    /// `additional_endpoints[https://app.datadoghq.eu][0]`, `sinks[1].mode`), or empty when the
    /// problem is about the whole file.
    pub key: String,
    /// 1-based line of the value (or of the key when there is no value), when known.
    pub line: Option<usize>,
    /// The environment variable the value came from, when it did not come from the file.
    pub env: Option<String>,
    /// The offending value, never a secret.
    pub value: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What the operator should do about it.
    pub fix: String,
}

impl Problem {
    /// A problem about `key` in `file`, without location or value yet.
    pub fn new(
        file: &Path,
        key: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Problem {
            file: file.to_path_buf(),
            key: key.into(),
            line: None,
            env: None,
            value: None,
            message: message.into(),
            fix: fix.into(),
        }
    }

    /// Sets the line.
    pub fn at(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }

    /// Sets the environment variable the value came from.
    pub fn from_env(mut self, env: Option<&str>) -> Self {
        self.env = env.map(str::to_owned);
        self
    }

    /// Sets the (non-secret) offending value.
    pub fn value(mut self, value: impl Into<String>) -> Self {
        self.value = Some(value.into());
        self
    }
}

impl fmt::Display for Problem {
    /// One line: `<where>: <key>: <message> (value "<v>"); fix: <fix>`. The value is printed
    /// with Rust string escaping so a value holding a newline cannot break the one-problem-
    /// per-line layout (or forge a log line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.env {
            Some(var) => write!(f, "environment variable {var}")?,
            None => {
                write!(f, "{}", self.file.display())?;
                if let Some(line) = self.line {
                    write!(f, ":{line}")?;
                }
            }
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", one_line(&self.message))?;
        if let Some(value) = &self.value {
            write!(f, " (value {value:?})")?;
        }
        if !self.fix.is_empty() {
            write!(f, "; fix: {}", one_line(&self.fix))?;
        }
        Ok(())
    }
}

/// Replaces line breaks so a message always stays on one line.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// Every error found while loading the configuration. `Display` prints one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Collects errors and warnings while the configuration is read and validated.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    pub(crate) errors: Vec<Problem>,
    /// Problems of one `additional_endpoints` entry (wire spec §10.2): that entry is inert (an
    /// `invalid` instance) and everything else runs; `check-config` still fails on them.
    pub(crate) entry_errors: Vec<Problem>,
    pub(crate) warnings: Vec<Problem>,
}

impl Problems {
    pub(crate) fn error(&mut self, problem: Problem) {
        self.errors.push(problem);
    }

    pub(crate) fn entry_error(&mut self, problem: Problem) {
        self.entry_errors.push(problem);
    }

    pub(crate) fn warn(&mut self, problem: Problem) {
        self.warnings.push(problem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_with_location_value_and_fix() {
        let p = Problem::new(
            Path::new("/etc/datadog-agent/datadog.yaml"),
            "delegated_auth.org_uuid",
            "is not a UUID",
            "set it to your org's UUID",
        )
        .at(Some(7))
        .value("abc\ndef");
        assert_eq!(
            p.to_string(),
            "/etc/datadog-agent/datadog.yaml:7: delegated_auth.org_uuid: is not a UUID \
             (value \"abc\\ndef\"); fix: set it to your org's UUID"
        );
    }

    #[test]
    fn display_names_the_environment_variable() {
        let p = Problem::new(Path::new("/x.yaml"), "site", "bad", "fix it")
            .at(Some(3))
            .from_env(Some("DD_SITE"));
        assert_eq!(
            p.to_string(),
            "environment variable DD_SITE: site: bad; fix: fix it"
        );
    }

    #[test]
    fn config_errors_print_one_problem_per_line() {
        let a = Problem::new(Path::new("/a"), "k1", "m1", "f1");
        let b = Problem::new(Path::new("/b"), "", "m2", "f2").at(Some(2));
        let text = ConfigErrors(vec![a, b]).to_string();
        assert_eq!(text, "/a: k1: m1; fix: f1\n/b:2: m2; fix: f2");
    }
}
