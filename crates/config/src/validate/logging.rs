//! `log_format`: how log lines are written (text or one JSON object per line).

use super::scalar::choice;
use super::Errors;
use crate::model::LogFormat;
use crate::raw::Scalar;

const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];

/// The file's `log_format`; `text` when absent or wrong (the problem is pushed).
pub(super) fn log_format(errs: &mut Errors, raw: Option<&Scalar>) -> LogFormat {
    raw.and_then(|s| choice(errs, "log_format", "log format", s, LOG_FORMATS))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use crate::model::LogFormat;
    use crate::validate::testing::{assert_one_error, ok, one};

    #[test]
    fn text_by_default_json_when_asked() {
        assert_eq!(ok(&one("")).log_format, LogFormat::Text);
        assert_eq!(
            ok(&format!("log_format: json\n{}", one(""))).log_format,
            LogFormat::Json
        );
        assert_eq!(
            ok(&format!("log_format: text\n{}", one(""))).log_format,
            LogFormat::Text
        );
    }

    #[test]
    fn anything_else_names_the_key() {
        assert_one_error(
            &format!("log_format: JSON\n{}", one("")),
            "log_format",
            "unknown log format \"JSON\": expected text or json",
        );
        assert_one_error(
            &format!("log_format: 1\n{}", one("")),
            "log_format",
            "unknown log format",
        );
    }
}
