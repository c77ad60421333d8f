//! Configuration errors: each names the YAML path of the problem so an operator can find it.

use std::fmt;

/// One problem in a configuration file.
///
/// `path` is the YAML path of the offending key, e.g. `listeners[1].backends[0].addr`,
/// `shutdown_timeout` or `listeners[0].health_check.rise`. It is empty for problems that
/// belong to no key (a YAML syntax error at the top of the document) and is the file name
/// for a file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    /// `{path}: {message}`, or just `{message}` when the problem has no path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one configuration file, in file order where it can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub(crate) fn one(error: ConfigError) -> Self {
        ConfigErrors {
            errors: vec![error],
        }
    }
}

impl std::error::Error for ConfigError {}

// Display is hand-written (not thiserror) because an empty path prints no `: ` prefix.
impl std::error::Error for ConfigErrors {}

impl fmt::Display for ConfigErrors {
    /// One line per error, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
