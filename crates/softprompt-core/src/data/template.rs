//! Prompt templates: text with `{field}` placeholders filled from a record.
//!
//! Syntax:
//! - `{name}` inserts the record's field `name`. A name with dots (`{target.span1_text}`) looks
//!   into nested objects when the record has no field with that exact name.
//! - `{{` and `}}` are a literal `{` and `}`.
//! - Values are rendered plainly: strings as they are, **with surrounding whitespace trimmed**
//!   (SST-2 sentences end with a space, some rows end with `\r`), numbers as JSON writes them
//!   (`3`, `0.5`), booleans as `true`/`false`. A missing or `null` field is an error; so is a list
//!   or an object.
//! - Filters, applied left to right after the name: `{choice1|lcfirst}`.
//!   - `lcfirst`: lower-case the first letter, unless the first word is "I" (`I`, `I'm`, `I've`...)
//!     or looks like an acronym (its second letter is upper-case).
//!   - `ucfirst`: upper-case the first letter.
//!   - `lower`, `upper`: the whole value.
//!   - `nodot`: remove trailing periods (for "premise because ..." style templates).
//!   - `map:a=x,b=y`: replace the value `a` by `x` and `b` by `y`; any other value is an error.
//!     Map entries cannot contain `,`, `=`, `|`, `{` or `}`.

use serde_json::{Map, Value};

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Field { name: String, filters: Vec<Filter> },
}

#[derive(Debug, Clone, PartialEq)]
enum Filter {
    LcFirst,
    UcFirst,
    Lower,
    Upper,
    NoDot,
    Map(Vec<(String, String)>),
}

/// Why a template could not be filled from a record.
#[derive(Debug, Clone, PartialEq)]
pub enum RenderError {
    /// The record has no such field (or it is `null`).
    Missing(String),
    /// The field is there but cannot be rendered (a list, an object, or a value a `map` filter
    /// does not know); the message says which.
    Bad(String),
}

impl Template {
    /// Parse `source`. Errors say what is wrong and where (character position).
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut lit = String::new();
        let chars: Vec<char> = source.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '{' if chars.get(i + 1) == Some(&'{') => {
                    lit.push('{');
                    i += 2;
                }
                '}' if chars.get(i + 1) == Some(&'}') => {
                    lit.push('}');
                    i += 2;
                }
                '}' => {
                    return Err(format!(
                        "template {source:?}: unmatched '}}' at position {i} (write '}}}}' for a literal brace)"
                    ))
                }
                '{' => {
                    let start = i;
                    let end = chars[i + 1..]
                        .iter()
                        .position(|&c| c == '}' || c == '{')
                        .map(|p| p + i + 1)
                        .filter(|&p| chars[p] == '}')
                        .ok_or_else(|| {
                            format!(
                                "template {source:?}: unclosed '{{' at position {start} (write '{{{{' for a literal brace)"
                            )
                        })?;
                    let inner: String = chars[start + 1..end].iter().collect();
                    let (name, filters) = parse_placeholder(&inner)
                        .map_err(|e| format!("template {source:?}: {{{inner}}}: {e}"))?;
                    if !lit.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut lit)));
                    }
                    segments.push(Segment::Field { name, filters });
                    i = end + 1;
                }
                c => {
                    lit.push(c);
                    i += 1;
                }
            }
        }
        if !lit.is_empty() {
            segments.push(Segment::Literal(lit));
        }
        Ok(Template {
            source: source.to_string(),
            segments,
        })
    }

    /// The template text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The field names the template uses, in order of appearance (with repeats).
    pub fn fields(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Field { name, .. } => Some(name.as_str()),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    /// Fill the template from `record`.
    pub fn render(&self, record: &Map<String, Value>) -> Result<String, RenderError> {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Literal(s) => out.push_str(s),
                Segment::Field { name, filters } => {
                    let value =
                        lookup(record, name).ok_or_else(|| RenderError::Missing(name.clone()))?;
                    let mut text = value_text(value).map_err(|kind| {
                        RenderError::Bad(format!("field '{name}' is {kind}, not text"))
                    })?;
                    for f in filters {
                        text = apply(f, &text)
                            .map_err(|e| RenderError::Bad(format!("field '{name}': {e}")))?;
                    }
                    out.push_str(&text);
                }
            }
        }
        Ok(out)
    }

    /// Whether the template ends with whitespace (then label words need no leading space).
    pub fn ends_with_space(&self) -> bool {
        matches!(self.segments.last(), Some(Segment::Literal(s)) if s.ends_with(char::is_whitespace))
    }
}

fn parse_placeholder(inner: &str) -> Result<(String, Vec<Filter>), String> {
    let mut parts = inner.split('|');
    let name = parts.next().unwrap_or("").trim().to_string();
    if name.is_empty() {
        return Err("empty field name".into());
    }
    let mut filters = Vec::new();
    for f in parts {
        let f = f.trim();
        filters.push(match f {
            "lcfirst" => Filter::LcFirst,
            "ucfirst" => Filter::UcFirst,
            "lower" => Filter::Lower,
            "upper" => Filter::Upper,
            "nodot" => Filter::NoDot,
            _ if f.starts_with("map:") => {
                let mut pairs = Vec::new();
                for entry in f["map:".len()..].split(',') {
                    let (k, v) = entry
                        .split_once('=')
                        .ok_or_else(|| format!("map entry '{entry}' is not KEY=VALUE"))?;
                    pairs.push((k.trim().to_string(), v.to_string()));
                }
                Filter::Map(pairs)
            }
            _ => {
                return Err(format!(
                "unknown filter '{f}' (known: lcfirst, ucfirst, lower, upper, nodot, map:a=x,b=y)"
            ))
            }
        });
    }
    Ok((name, filters))
}

/// The record's field `name`: the exact key, else a dotted path through nested objects (and
/// list indices). `null` counts as missing.
pub(crate) fn lookup<'a>(record: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let found = match record.get(name) {
        Some(v) => Some(v),
        None if name.contains('.') => {
            let mut parts = name.split('.');
            let first = parts.next()?;
            let mut cur = record.get(first)?;
            for p in parts {
                cur = match cur {
                    Value::Object(m) => m.get(p)?,
                    Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            Some(cur)
        }
        None => None,
    };
    found.filter(|v| !v.is_null())
}

/// Plain text of a scalar value (strings trimmed); `Err(kind)` for lists and objects.
pub(crate) fn value_text(v: &Value) -> Result<String, &'static str> {
    match v {
        Value::String(s) => Ok(s.trim().to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        Value::Array(_) => Err("a list"),
        Value::Object(_) => Err("an object"),
    }
}

fn apply(f: &Filter, s: &str) -> Result<String, String> {
    Ok(match f {
        Filter::LcFirst => lcfirst(s),
        Filter::UcFirst => {
            let mut c = s.chars();
            match c.next() {
                Some(first) => first.to_uppercase().chain(c).collect(),
                None => String::new(),
            }
        }
        Filter::Lower => s.to_lowercase(),
        Filter::Upper => s.to_uppercase(),
        Filter::NoDot => s.trim_end_matches('.').trim_end().to_string(),
        Filter::Map(pairs) => match pairs.iter().find(|(k, _)| k == s) {
            Some((_, v)) => v.clone(),
            None => {
                let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
                return Err(format!(
                    "value '{s}' is not in the map (expected one of {})",
                    keys.join(", ")
                ));
            }
        },
    })
}

fn lcfirst(s: &str) -> String {
    let first_word = s.split(|c: char| c.is_whitespace()).next().unwrap_or("");
    // "I", "I'm", "I'd", "I've", "I'll" stay as they are.
    let is_pronoun_i =
        first_word == "I" || first_word.starts_with("I'") || first_word.starts_with("I’");
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    let second_upper = s.chars().nth(1).is_some_and(|c| c.is_uppercase());
    if is_pronoun_i || second_upper {
        return s.to_string();
    }
    first.to_lowercase().chain(chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn renders_fields_and_escapes() {
        let t = Template::parse("{{x}} Review: {sentence}\nLabel {n} {b}}}").unwrap();
        let r = rec(json!({"sentence": "  a fine film  ", "n": 3, "b": true}));
        assert_eq!(
            t.render(&r).unwrap(),
            "{x} Review: a fine film\nLabel 3 true}"
        );
        assert_eq!(t.fields(), vec!["sentence", "n", "b"]);
    }

    #[test]
    fn parse_errors() {
        assert!(Template::parse("a {b").unwrap_err().contains("unclosed"));
        assert!(Template::parse("a } b").unwrap_err().contains("unmatched"));
        assert!(Template::parse("a {} b")
            .unwrap_err()
            .contains("empty field"));
        assert!(Template::parse("{a|shout}")
            .unwrap_err()
            .contains("unknown filter"));
        assert!(Template::parse("{a{b}").unwrap_err().contains("unclosed"));
    }

    #[test]
    fn missing_null_and_nested() {
        let t = Template::parse("{a}").unwrap();
        assert_eq!(
            t.render(&rec(json!({"b": 1}))),
            Err(RenderError::Missing("a".into()))
        );
        assert_eq!(
            t.render(&rec(json!({"a": null}))),
            Err(RenderError::Missing("a".into()))
        );
        assert!(matches!(
            t.render(&rec(json!({"a": [1]}))),
            Err(RenderError::Bad(_))
        ));
        let t = Template::parse("{target.span1_text}/{xs.1}").unwrap();
        let r = rec(json!({"target": {"span1_text": "Mark"}, "xs": ["p", "q"]}));
        assert_eq!(t.render(&r).unwrap(), "Mark/q");
    }

    #[test]
    fn filters() {
        let r =
            rec(json!({"c": "The sun was rising.", "i": "I ate.", "u": "USA won", "q": "cause"}));
        let render = |s: &str| Template::parse(s).unwrap().render(&r);
        assert_eq!(render("{c|lcfirst}").unwrap(), "the sun was rising.");
        assert_eq!(render("{i|lcfirst}").unwrap(), "I ate.");
        assert_eq!(render("{u|lcfirst}").unwrap(), "USA won");
        assert_eq!(render("{c|nodot|upper}").unwrap(), "THE SUN WAS RISING");
        assert_eq!(
            render("{q|map:cause=because,effect=so}").unwrap(),
            "because"
        );
        assert!(matches!(
            render("{c|map:cause=because}"),
            Err(RenderError::Bad(_))
        ));
        assert_eq!(render("{u|lower|ucfirst}").unwrap(), "Usa won");
    }

    #[test]
    fn ends_with_space() {
        assert!(Template::parse("Answer: ").unwrap().ends_with_space());
        assert!(!Template::parse("Answer:").unwrap().ends_with_space());
        assert!(!Template::parse("{x}").unwrap().ends_with_space());
    }
}
