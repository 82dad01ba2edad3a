//! Reading a config file: `${ENV}` interpolation, YAML parsing, then validation.
//!
//! Every problem is reported as `file:line:column: message`. Line and column are
//! 1-based; `0:0` means the problem has no position in the file (the file cannot be
//! read, or the offending setting carries no source location).

use std::fmt;
use std::path::Path;

use serde_saphyr::{Location, MessageFormatter, Options, UserMessageFormatter};

use super::schema::Config;
use super::validate;

/// Largest config file accepted, in bytes (after interpolation).
const MAX_CONFIG_BYTES: usize = 16 * 1024 * 1024;

/// One problem in a config file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given by the caller.
    pub file: String,
    /// 1-based line; 0 when unknown.
    pub line: u64,
    /// 1-based column in characters; 0 when unknown.
    pub column: u64,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error at a location reported by the YAML parser.
    pub fn at(file: &str, loc: &Location, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: loc.line(),
            column: loc.column(),
            message: message.into(),
        }
    }

    /// An error at an explicit line and column (0:0 when the position is unknown).
    pub fn new(file: &str, line: u64, column: u64, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// All problems found (non-empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

/// Reads, interpolates, parses and validates the config file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&file, 0, 0, format!("cannot read: {e}")))?;
    load_str(&text, &file)
}

/// Interpolates, parses and validates config text; `file` names it in errors.
pub fn load_str(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    load_str_with(text, file, |name| std::env::var(name).ok())
}

/// [`load_str`] with an explicit environment lookup.
pub(crate) fn load_str_with(
    text: &str,
    file: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let text = interpolate(text, file, lookup).map_err(ConfigErrors)?;
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::new(
            file,
            0,
            0,
            format!(
                "config is too large: {} bytes, at most {MAX_CONFIG_BYTES}",
                text.len()
            ),
        )
        .into());
    }
    let cfg = parse(&text, file)?;
    let errors = validate::validate(&cfg, file);
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Parser options: duplicate keys rejected, and a budget small enough that alias
/// expansion ("billion laughs") and deep nesting cannot exhaust memory or stack,
/// yet far beyond any real gateway config.
fn parse_options() -> Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 500_000,
            max_nodes: 200_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_recorded_anchor_events: 100_000,
            max_recorded_anchor_bytes: 4 * 1024 * 1024,
            max_depth: 32,
            max_documents: 2,
            max_total_scalar_bytes: MAX_CONFIG_BYTES,
            max_merge_keys: 1_000,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 100_000,
            max_replay_stack_depth: 16,
            max_alias_expansions_per_anchor: 1_000,
        },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        emit_comments: false,
        with_snippet: false,
    }
}

/// Parses YAML text into a [`Config`]; a document with no content is an empty config.
fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    if is_blank_yaml(text) {
        return Ok(Config::default());
    }
    serde_saphyr::from_str_with_options::<Config>(text, parse_options())
        .map_err(|e| parse_error(&e, text, file).into())
}

/// Whether the text holds only whitespace, comments and document markers.
fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    })
}

/// Maps a parser error to a [`ConfigError`]: position from the error, message
/// without the location text the parser's `Display` appends. A scalar of the wrong
/// type is described with its text: "expected ..., found `...`".
fn parse_error(err: &serde_saphyr::Error, text: &str, file: &str) -> ConfigError {
    let mut inner = err;
    while let serde_saphyr::Error::WithSnippet { error, .. }
    | serde_saphyr::Error::AliasError { error, .. } = inner
    {
        inner = error;
    }
    let loc = err.location().unwrap_or(Location::UNKNOWN);
    let message = match inner {
        serde_saphyr::Error::InvalidScalar { ty, location } => {
            let expected = describe_scalar_type(ty);
            match source_text(text, location) {
                Some(found) => format!("expected {expected}, found `{found}`"),
                None => format!("expected {expected}"),
            }
        }
        _ => UserMessageFormatter.format_message(inner).into_owned(),
    };
    ConfigError::at(file, &loc, sanitize(&message))
}

/// Words for a scalar type named by the parser.
fn describe_scalar_type(ty: &str) -> String {
    match ty {
        "u8" => "an integer from 0 to 255".into(),
        "u16" => "an integer from 0 to 65535".into(),
        "u32" => "an integer from 0 to 4294967295".into(),
        "u64" | "u128" | "usize" => "a non-negative integer".into(),
        "i32" => "an integer from -2147483648 to 2147483647".into(),
        "i8" | "i16" | "i64" | "i128" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "bool" | "boolean" => "`true` or `false`".into(),
        other => other.into(),
    }
}

/// The source text at `loc`, shortened, when the parser recorded its byte range.
fn source_text<'a>(text: &'a str, loc: &Location) -> Option<&'a str> {
    let span = loc.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    let found = text.get(start..start.checked_add(len)?)?.trim();
    if found.is_empty() {
        return None;
    }
    let cut = found.char_indices().nth(60).map_or(found.len(), |(i, _)| i);
    Some(found[..cut].lines().next().unwrap_or(""))
}

/// Escapes control characters so a message stays on one line.
fn sanitize(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Replaces `${NAME}` and `${NAME:-default}` with values from `lookup`, and
/// `${file:PATH}` with the content of a file (a secret mounted by Kubernetes or
/// Docker; one final line break removed; a relative path is taken from the
/// config file's folder); `$${` writes a literal `${`.
///
/// - `${NAME}` with `NAME` unset is an error at the `$`.
/// - `${NAME:-default}` uses `default` when `NAME` is unset or empty; the default
///   runs to the first `}` and is inserted as written (no nested references).
/// - Names are `[A-Za-z_][A-Za-z0-9_]*`.
/// - Values are inserted as raw text before YAML parsing: quote the YAML scalar if
///   the value may contain `:`, `#` or similar.
/// - A value containing a line break is rejected, so that line numbers reported
///   later stay those of the file. Columns after a substitution on the same line
///   are shifted by the difference between the reference and its value.
/// - Interpolation is textual and also applies inside comments; write `$${` there.
///
/// All problems are collected.
pub(crate) fn interpolate(
    text: &str,
    file: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<ConfigError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_no = index as u64 + 1;
        // A commented-out `${VAR}` must not need VAR set.
        let (code, comment) = line.split_at(comment_start(line).unwrap_or(line.len()));
        interpolate_line(code, line_no, file, &lookup, &mut out, &mut errors);
        out.push_str(comment);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Where a YAML comment starts on `line`: a `#` at the start or after a space
/// or tab, outside single- and double-quoted scalars. (A `#` inside a block
/// scalar's text is taken for a comment too: references after it stay as
/// written.)
fn comment_start(line: &str) -> Option<usize> {
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut prev = None;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if double => escaped = true,
            '"' if !single => double = !double,
            '\'' if !double => single = !single,
            '#' if !single && !double && prev.is_none_or(|p: char| p == ' ' || p == '\t') => {
                return Some(i);
            }
            _ => {}
        }
        prev = Some(c);
    }
    None
}

/// Interpolates one line (with its line break, if any) into `out`.
fn interpolate_line(
    line: &str,
    line_no: u64,
    file: &str,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
    errors: &mut Vec<ConfigError>,
) {
    let mut rest = line;
    // Column (1-based, in characters) of the first character of `rest`.
    let mut column: u64 = 1;
    while let Some(pos) = rest.find('$') {
        let (before, at) = rest.split_at(pos);
        out.push_str(before);
        column += before.chars().count() as u64;
        if let Some(after) = at.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            column += 3;
            continue;
        }
        let Some(body_start) = at.strip_prefix("${") else {
            out.push('$');
            rest = &at[1..];
            column += 1;
            continue;
        };
        let err = |msg: String| ConfigError::new(file, line_no, column, msg);
        let Some(end) = body_start.find('}') else {
            errors.push(err(
                "unterminated `${`: expected `}` on the same line (write `$${` for a literal `${`)"
                    .into(),
            ));
            // Nothing more can be read on this line.
            out.push_str(at);
            return;
        };
        let body = &body_start[..end];
        let consumed = 2 + body.len() + 1;
        if let Some(path) = body.strip_prefix("file:") {
            match read_secret_file(file, path) {
                Ok(v) => out.push_str(&v),
                Err(msg) => errors.push(err(msg)),
            }
            column += at[..consumed].chars().count() as u64;
            rest = &at[consumed..];
            continue;
        }
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        if !valid_var_name(name) {
            errors.push(err(format!(
                "invalid variable reference `${{{body}}}`: expected `${{NAME}}` or \
                 `${{NAME:-default}}` with NAME made of letters, digits and `_`"
            )));
        } else {
            let value = match (lookup(name), default) {
                (Some(v), Some(d)) if v.is_empty() => Some(d.to_owned()),
                (Some(v), _) => Some(v),
                (None, Some(d)) => Some(d.to_owned()),
                (None, None) => None,
            };
            match value {
                None => errors.push(err(format!(
                    "environment variable `{name}` is not set (use `${{{name}:-default}}` \
                     to give a default)"
                ))),
                Some(v) if v.contains(['\n', '\r']) => errors.push(err(format!(
                    "environment variable `{name}` contains a line break, which is not \
                     allowed in an interpolated value"
                ))),
                Some(v) => out.push_str(&v),
            }
        }
        column += at[..consumed].chars().count() as u64;
        rest = &at[consumed..];
    }
    out.push_str(rest);
}

/// The content of the file a `${file:PATH}` reference names, for the config
/// file `file`: one final line break removed; other line breaks refused.
fn read_secret_file(file: &str, path: &str) -> Result<String, String> {
    let path = std::path::Path::new(path.trim());
    if path.as_os_str().is_empty() {
        return Err("`${file:}` needs a path, as in `${file:/run/secrets/api-key}`".into());
    }
    let full = if path.is_relative() {
        crate::tls::config_dir(file).join(path)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&full)
        .map_err(|e| format!("cannot read `{}` for `${{file:...}}`: {e}", full.display()))?;
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if text.contains(['\n', '\r']) {
        return Err(format!(
            "`{}` holds several lines; `${{file:...}}` takes a one-line value",
            full.display()
        ));
    }
    Ok(text.to_owned())
}

/// Whether `name` is `[A-Za-z_][A-Za-z0-9_]*`.
fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("10.0.0.1".into()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nb".into()),
            _ => None,
        }
    }

    fn interp(text: &str) -> Result<String, Vec<ConfigError>> {
        interpolate(text, "t.yaml", env)
    }

    #[test]
    fn comments_are_not_interpolated() {
        assert_eq!(
            interp("a: ${HOST} # was ${NOPE}\n").unwrap(),
            "a: 10.0.0.1 # was ${NOPE}\n"
        );
        assert_eq!(interp("# token: ${NOPE}\n").unwrap(), "# token: ${NOPE}\n");
        assert_eq!(interp("  # ${NOPE}").unwrap(), "  # ${NOPE}");
        // Not comments: inside quotes, or `#` within a word.
        assert!(interp("a: \"x # ${NOPE}\"").is_err());
        assert!(interp("a: 'it''s # ${NOPE}'").is_err());
        assert!(interp("a: x#${NOPE}").is_err());
        assert_eq!(
            interp("a: \"x \\\" # y\" # ${NOPE}").unwrap(),
            "a: \"x \\\" # y\" # ${NOPE}"
        );
    }

    #[test]
    fn file_references_read_one_line_secrets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "s3cret\n").unwrap();
        std::fs::write(dir.path().join("two"), "a\nb\n").unwrap();
        let cfg = dir.path().join("portico.yaml").display().to_string();
        let f = |text: &str| interpolate(text, &cfg, env);
        assert_eq!(
            f("k: ${file:key} # ${file:nope}\n").unwrap(),
            "k: s3cret # ${file:nope}\n"
        );
        let abs = dir.path().join("key").display().to_string();
        assert_eq!(f(&format!("k: ${{file:{abs}}}")).unwrap(), "k: s3cret");
        let e = f("a: 1\nk: ${file:missing}\n").unwrap_err();
        assert_eq!((e[0].line, e[0].column), (2, 4));
        assert!(e[0].message.contains("cannot read"), "{}", e[0].message);
        let e = f("k: ${file:two}").unwrap_err();
        assert!(e[0].message.contains("several lines"), "{}", e[0].message);
    }

    #[test]
    fn interpolates_set_variable() {
        assert_eq!(interp("a: ${HOST}:80\n").unwrap(), "a: 10.0.0.1:80\n");
    }

    #[test]
    fn interpolates_default() {
        assert_eq!(interp("a: ${NOPE:-x:1}").unwrap(), "a: x:1");
        assert_eq!(interp("a: ${HOST:-x}").unwrap(), "a: 10.0.0.1");
        assert_eq!(interp("a: ${EMPTY:-d}").unwrap(), "a: d");
        assert_eq!(interp("a: ${NOPE:-}").unwrap(), "a: ");
        assert_eq!(interp("a: [${EMPTY}]").unwrap(), "a: []");
    }

    #[test]
    fn missing_variable_is_an_error_with_its_place() {
        let errs = interp("a: 1\nb: x ${NOPE} ${ALSO_NOPE}\n").unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!((errs[0].line, errs[0].column), (2, 6));
        assert_eq!((errs[1].line, errs[1].column), (2, 14));
        assert!(errs[0].message.contains("`NOPE` is not set"), "{}", errs[0]);
        assert_eq!(
            errs[0].to_string(),
            "t.yaml:2:6: environment variable `NOPE` is not set (use `${NOPE:-default}` to give a default)"
        );
    }

    #[test]
    fn escape_writes_literal() {
        assert_eq!(
            interp("a: $${HOST} $x $$ ${HOST}").unwrap(),
            "a: ${HOST} $x $$ 10.0.0.1"
        );
    }

    #[test]
    fn rejects_newline_in_value() {
        let errs = interp("x: 1\ny: ${MULTI}\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!((errs[0].line, errs[0].column), (2, 4));
        assert!(errs[0].message.contains("line break"));
    }

    #[test]
    fn rejects_malformed_references() {
        let errs = interp("a: ${HOST\nb: ${1X}\nc: ${}\n").unwrap_err();
        assert_eq!(errs.len(), 3);
        assert_eq!(errs[0].line, 1);
        assert!(errs[0].message.contains("unterminated"));
        assert_eq!((errs[1].line, errs[1].column), (2, 4));
        assert!(errs[1].message.contains("invalid variable reference"));
        assert_eq!(errs[2].line, 3);
    }

    #[test]
    fn columns_count_characters() {
        let errs = interp("é: ${NOPE}").unwrap_err();
        assert_eq!(errs[0].column, 4);
    }

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        load_str_with(text, "t.yaml", env)
    }

    #[test]
    fn unknown_key_is_reported_with_position() {
        let text = "listeners:\n  - name: main\n    address: 127.0.0.1:8080\nupstreams:\n  api:\n    endpoints: [\"${HOST}:80\"]\n    balanse: random\n";
        let errs = load(text).unwrap_err();
        assert_eq!(errs.0.len(), 1);
        let e = &errs.0[0];
        assert_eq!((e.line, e.column), (7, 5), "{e}");
        assert_eq!(
            e.to_string(),
            "t.yaml:7:5: unknown field `balanse`, expected one of endpoints, balance, protocol, \
             host, timeouts, pool, resolve_interval, health_check, outlier_detection, \
             circuit_breaker, retry_budget, slow_start, panic_mode, tls"
        );
    }

    #[test]
    fn type_error_is_reported_with_position() {
        let text = "workers: many\nlisteners:\n  - name: main\n    address: 127.0.0.1:8080\n";
        let errs = load(text).unwrap_err();
        let e = &errs.0[0];
        assert_eq!((e.line, e.column), (1, 10), "{e}");
        assert_eq!(e.message, "expected a non-negative integer, found `many`");
        let text = "listeners:\n  - name: main\n    address: 127.0.0.1:8080\nroutes:\n  - name: r\n    respond: { status: 70000 }\n";
        let e = &load(text).unwrap_err().0[0];
        assert_eq!((e.line, e.column), (6, 24), "{e}");
        assert_eq!(
            e.message,
            "expected an integer from 0 to 65535, found `70000`"
        );
    }

    #[test]
    fn unit_error_is_reported() {
        let text = "listeners:\n  - name: main\n    address: 127.0.0.1:8080\nshutdown_timeout: 5\n";
        let e = &load(text).unwrap_err().0[0];
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("needs a unit"), "{}", e.message);
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let text = "listeners:\n  - name: main\n    address: 127.0.0.1:8080\n    name: again\n";
        let e = &load(text).unwrap_err().0[0];
        assert_eq!((e.line, e.column), (4, 5), "{e}");
        assert_eq!(
            e.message,
            "duplicate mapping key `name` is not allowed here"
        );
    }

    /// A nested list of strings, to make the parser expand every alias.
    #[derive(Debug, serde::Deserialize)]
    #[serde(untagged)]
    #[allow(dead_code)]
    enum Tree {
        Leaf(String),
        List(Vec<Tree>),
    }

    fn parse_any(text: &str) -> Result<std::collections::BTreeMap<String, Tree>, ConfigError> {
        serde_saphyr::from_str_with_options(text, parse_options())
            .map_err(|e| parse_error(&e, text, "t.yaml"))
    }

    #[test]
    fn alias_bomb_is_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = parse_any(&text).unwrap_err();
        assert!(e.message.contains("too large or too complex"), "{e}");
        // A few aliases are fine.
        assert!(parse_any("a: &a [x]\nb: *a\n").is_ok());
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let text = format!("a: {}x{}\n", "[".repeat(100), "]".repeat(100));
        let e = parse_any(&text).unwrap_err();
        assert!(e.message.contains("too large or too complex"), "{e}");
    }

    #[test]
    fn one_document_only() {
        let text = "listeners: []\n---\nworkers: 2\n";
        let e = &load(text).unwrap_err().0[0];
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("multiple"), "{e}");
    }

    #[test]
    fn endpoint_map_errors_are_precise() {
        let text = "listeners:\n  - name: main\n    address: 127.0.0.1:8080\nupstreams:\n  api:\n    endpoints:\n      - address: a:1\n        wieght: 2\n";
        let e = &load(text).unwrap_err().0[0];
        assert_eq!((e.line, e.column), (8, 9), "{e}");
        assert_eq!(
            e.message,
            "unknown field `wieght`, expected one of address, weight"
        );
        let text = "listeners:\n  - name: main\n    address: 127.0.0.1:8080\nupstreams:\n  api:\n    endpoints: [8080]\n";
        let e = &load(text).unwrap_err().0[0];
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("host:port"), "{e}");
    }

    #[test]
    fn empty_file_needs_a_listener() {
        for text in ["", "\n# nothing\n", "---\n"] {
            let errs = load(text).unwrap_err();
            assert_eq!(errs.0.len(), 1, "{errs}");
            assert!(errs.0[0].message.contains("no listeners"), "{errs}");
        }
    }

    #[test]
    fn interpolation_errors_stop_before_parsing() {
        let errs = load("listeners: ${NOPE}\nworkers: ${NADA}\n").unwrap_err();
        assert_eq!(errs.0.len(), 2);
        assert_eq!(errs.to_string().lines().count(), 2);
    }

    #[test]
    fn read_error_has_no_position() {
        let errs = load_file(Path::new("/nonexistent/portico.yaml")).unwrap_err();
        assert_eq!((errs.0[0].line, errs.0[0].column), (0, 0));
        assert!(errs.0[0].message.starts_with("cannot read: "));
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
workers: 4
shutdown_timeout: 15s
access_log:
  target: stderr
  buffer: 1024
request_id:
  header: x-trace-id
  trust_incoming: true
forwarding:
  trusted_proxies: [10.0.0.0/8, "::1", 192.168.1.1]
  forwarded_header: true
limits:
  max_uri_length: 4KiB
  max_header_bytes: 32KiB
  max_headers: 64
  header_read_timeout: 5s
listeners:
  - name: public
    address: 0.0.0.0:${PORT:-8080}
  - name: admin
    address: "[::1]:9090"
upstreams:
  api:
    endpoints:
      - ${HOST}:8000
      - { address: api-2.internal:8000, weight: 3 }
      - "[fd00::1]:8000"
    balance: { consistent_hash: { header: x-user } }
    protocol: h2c
    host: { fixed: api.example.com }
    timeouts: { connect: 1s, request: 30s, idle: 2m }
    pool: { idle_timeout: 30s, max_idle: 0, max_connections: 100 }
    resolve_interval: 10s
  static:
    endpoints: [127.0.0.1:9000]
    balance: least_request
    host: endpoint
routes:
  - name: api
    priority: 10
    listeners: [public]
    match:
      host: [api.example.com, "*.api.example.com"]
      prefix: /api
      methods: [GET, POST]
      headers: [{ name: x-env, value: prod }]
    rewrite: { strip_prefix: /api, host: backend.local }
    upstream: api
  - name: old
    match: { path: "/old/{*rest}" }
    redirect: { location: "/new/{rest}", status: 301 }
  - name: health
    listeners: [admin]
    match: { path: /healthz }
    respond:
      status: 200
      headers: { content-type: text/plain }
      body: "ok\n"
  - name: files
    match: { prefix: / }
    upstream: static
"#;
        let cfg = load(text).unwrap();
        assert_eq!(cfg.workers, Some(4));
        assert_eq!(cfg.listeners[0].address.value, "0.0.0.0:8080");
        assert_eq!(
            cfg.upstreams["api"].value.endpoints[0].value.address(),
            "10.0.0.1:8000"
        );
        assert_eq!(cfg.upstreams["api"].value.endpoints[1].value.weight(), 3);
        assert_eq!(cfg.routes.len(), 4);
        assert_eq!(cfg.routes[2].value.respond.as_ref().unwrap().body, "ok\n");
    }
}
