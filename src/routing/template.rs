//! String templates with `{name}` placeholders, parsed once and rendered per request.
//!
//! Used for rewrite path templates (`/v2/{id}`) and redirect locations
//! (`https://{host}{path}`). Placeholder names are letters, digits, `_` and `-`;
//! literal `{` and `}` are not allowed anywhere else.

use std::fmt;

/// A parsed template: literal text interleaved with `{name}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: Box<str>,
    parts: Box<[Part]>,
    literal_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    Placeholder(Box<str>),
}

/// Whether `name` is a valid placeholder or path parameter name.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Template {
    /// Parses `source`, failing on unbalanced braces or invalid placeholder names.
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut literal_len = 0;
        let mut rest = source;
        let mut offset = 0;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            let pos = offset + at;
            if rest.as_bytes()[at] == b'}' {
                return Err(format!(
                    "unexpected `}}` at byte {pos} of `{source}`: braces may only surround a placeholder name"
                ));
            }
            let after = &rest[at + 1..];
            let close = after
                .find(['{', '}'])
                .filter(|&i| after.as_bytes()[i] == b'}');
            let Some(close) = close else {
                return Err(format!(
                    "unclosed `{{` at byte {pos} of `{source}`: write placeholders as `{{name}}`"
                ));
            };
            let name = &after[..close];
            if name.is_empty() {
                return Err(format!(
                    "empty placeholder `{{}}` at byte {pos} of `{source}`"
                ));
            }
            if let Some(stripped) = name.strip_prefix('*') {
                return Err(format!(
                    "placeholder `{{{name}}}` at byte {pos} of `{source}`: refer to a catch-all parameter as `{{{stripped}}}`"
                ));
            }
            if !is_valid_name(name) {
                return Err(format!(
                    "invalid placeholder name `{name}` at byte {pos} of `{source}`: use letters, digits, `_` and `-`"
                ));
            }
            if !literal.is_empty() {
                literal_len += literal.len();
                parts.push(Part::Literal(std::mem::take(&mut literal).into_boxed_str()));
            }
            parts.push(Part::Placeholder(name.into()));
            let consumed = at + 1 + close + 1;
            rest = &rest[consumed..];
            offset += consumed;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            literal_len += literal.len();
            parts.push(Part::Literal(literal.into_boxed_str()));
        }
        Ok(Template {
            source: source.into(),
            parts: parts.into_boxed_slice(),
            literal_len,
        })
    }

    /// The text the template was parsed from.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Placeholder names in order of appearance (repeats included).
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(name) => Some(&**name),
            Part::Literal(_) => None,
        })
    }

    /// Whether the template has no placeholders (renders to its source).
    pub fn is_literal(&self) -> bool {
        self.names().next().is_none()
    }

    /// Appends the rendered template to `out`; a placeholder whose `lookup`
    /// gives `None` renders as nothing (check [`Template::names`] when compiling).
    pub fn render<'a>(&self, out: &mut String, mut lookup: impl FnMut(&str) -> Option<&'a str>) {
        out.reserve(self.literal_len);
        for part in self.parts.iter() {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Placeholder(name) => {
                    if let Some(value) = lookup(name) {
                        out.push_str(value);
                    }
                }
            }
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn render(t: &Template, vars: &[(&'static str, &'static str)]) -> String {
        let mut out = String::from(">");
        t.render(&mut out, |name| {
            vars.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        });
        out
    }

    #[test]
    fn renders_literals_and_placeholders() {
        let t = Template::parse("https://{host}{path}?x={id}-{id}").unwrap();
        assert_eq!(t.names().collect::<Vec<_>>(), ["host", "path", "id", "id"]);
        assert!(!t.is_literal());
        let out = render(&t, &[("host", "a.example"), ("path", "/p"), ("id", "7")]);
        assert_eq!(out, ">https://a.example/p?x=7-7");
        assert_eq!(t.as_str(), "https://{host}{path}?x={id}-{id}");
        assert_eq!(t.to_string(), t.as_str());
    }

    #[test]
    fn literal_only_and_empty() {
        let t = Template::parse("/static/path").unwrap();
        assert!(t.is_literal());
        assert_eq!(render(&t, &[]), ">/static/path");
        let t = Template::parse("").unwrap();
        assert!(t.is_literal());
        assert_eq!(render(&t, &[]), ">");
        let t = Template::parse("{only}").unwrap();
        assert_eq!(render(&t, &[("only", "x")]), ">x");
    }

    #[test]
    fn unknown_placeholder_renders_empty() {
        let t = Template::parse("/a/{missing}/b").unwrap();
        assert_eq!(render(&t, &[]), ">/a//b");
    }

    #[test]
    fn parse_errors_are_precise() {
        let e = Template::parse("/a/{id").unwrap_err();
        assert!(e.contains("unclosed `{` at byte 3"), "{e}");
        let e = Template::parse("/a/}x").unwrap_err();
        assert!(e.contains("unexpected `}` at byte 3"), "{e}");
        let e = Template::parse("/a/{}").unwrap_err();
        assert!(e.contains("empty placeholder"), "{e}");
        let e = Template::parse("/{a b}").unwrap_err();
        assert!(e.contains("invalid placeholder name `a b`"), "{e}");
        let e = Template::parse("/{a{b}}").unwrap_err();
        assert!(e.contains("unclosed `{` at byte 1"), "{e}");
        let e = Template::parse("/{*rest}").unwrap_err();
        assert!(e.contains("as `{rest}`"), "{e}");
        let e = Template::parse("/{{x}}").unwrap_err();
        assert!(e.contains("unclosed"), "{e}");
    }
}
