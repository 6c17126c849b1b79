//! A position-aware YAML tree for the Agent's `datadog.yaml`.
//!
//! `datadog.yaml` belongs to the Agent: it may hold hundreds of keys we never read, of any type.
//! A typed serde struct would stop at the first wrong type, so instead the whole document is read
//! into this loose tree (every node remembers its line), and `agent.rs` then reads the few keys we
//! care about, reporting every wrong type at once. Scalars keep their source text, so
//! `api_key: 0123…` stays `0123…` instead of becoming a number (serde-saphyr infers types for
//! untyped reads, and a 32-digit key would otherwise lose digits).
//!
//! Environment overrides are grafted into the same tree (`env.rs`), with the variable name in
//! place of a line, so every check reports env values and file values the same way.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

/// Largest `datadog.yaml` we read. Real Agent configs are tens of KiB; the bound keeps a
/// runaway or hostile file from costing memory (the tree is built in full).
pub(crate) const MAX_AGENT_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Limits for serde-saphyr. Values are the library's documented defaults, pinned here so they
/// do not change under us, except `max_documents` (the Agent reads one document) and
/// `max_aliases`/`max_anchors` (a config needs few; billion-laughs needs many).
pub(crate) fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 1_000_000,
            max_aliases: 10_000,
            max_anchors: 10_000,
            max_depth: 64,
            max_documents: 1,
            max_nodes: 250_000,
        },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        // `.inf`/`.nan` somewhere in an unrelated Agent key must not fail the whole file.
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::AsString,
        // Snippets would quote the surrounding lines of the file, which may hold API keys.
        with_snippet: false,
    }
}

/// What kind of scalar the YAML parser saw. Only used to describe a wrong type; values are
/// always read from their text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarKind {
    Str,
    Bool,
    Int,
    Float,
}

/// A node's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// `~`, `null`, an empty value, or an empty document.
    Null,
    /// Any scalar, as written (plain scalars) or as decoded (quoted and block scalars).
    Scalar {
        text: String,
        kind: ScalarKind,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// A node with its origin.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Value,
    /// 1-based line in the file, when the node came from the file.
    pub(crate) line: Option<usize>,
    /// The environment variable that supplied this node, when it came from the environment.
    pub(crate) env: Option<String>,
}

/// A mapping entry. Keys are kept as text: the Agent's keys are strings, and a non-string key
/// (`1: x`, `[a, b]: y`) can never be one we read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) key_line: Option<usize>,
    pub(crate) value: Node,
}

impl Node {
    pub(crate) fn new(value: Value) -> Self {
        Node {
            value,
            line: None,
            env: None,
        }
    }

    pub(crate) fn empty_map() -> Self {
        Node::new(Value::Map(Vec::new()))
    }

    /// A short description of the node's type, for "expected X, found Y" messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar { kind, .. } => match kind {
                ScalarKind::Str => "a string",
                ScalarKind::Bool => "a boolean",
                ScalarKind::Int => "an integer",
                ScalarKind::Float => "a number",
            },
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// Marks this node and all its descendants as coming from environment variable `var`.
    pub(crate) fn mark_env(&mut self, var: &str) {
        self.env = Some(var.to_owned());
        self.line = None;
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|n| n.mark_env(var)),
            Value::Map(entries) => entries.iter_mut().for_each(|e| {
                e.key_line = None;
                e.value.mark_env(var);
            }),
            Value::Null | Value::Scalar { .. } => {}
        }
    }

    /// Converts a JSON value (from a `DD_*` variable holding JSON, as the Agent accepts for
    /// `additional_endpoints`) into a tree node.
    pub(crate) fn from_json(value: &serde_json::Value) -> Node {
        let value = match value {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Scalar {
                text: b.to_string(),
                kind: ScalarKind::Bool,
            },
            serde_json::Value::Number(n) => Value::Scalar {
                text: n.to_string(),
                kind: if n.is_f64() {
                    ScalarKind::Float
                } else {
                    ScalarKind::Int
                },
            },
            serde_json::Value::String(s) => Value::Scalar {
                text: s.clone(),
                kind: ScalarKind::Str,
            },
            serde_json::Value::Array(items) => {
                Value::Seq(items.iter().map(Node::from_json).collect())
            }
            serde_json::Value::Object(map) => Value::Map(
                map.iter()
                    .map(|(k, v)| Entry {
                        key: k.clone(),
                        key_line: None,
                        value: Node::from_json(v),
                    })
                    .collect(),
            ),
        };
        Node::new(value)
    }
}

/// Why a YAML document could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub(crate) line: Option<usize>,
    pub(crate) message: String,
    /// A specific fix, when the cause is known.
    pub(crate) fix: Option<String>,
}

/// Parses a whole YAML document into a tree. An empty (or comment-only) document is `Null`.
pub(crate) fn parse(source: &str) -> Result<Node, YamlError> {
    let raw: Spanned<RawNode> =
        serde_saphyr::from_str_with_options(source, yaml_options()).map_err(yaml_error)?;
    Ok(convert(source, raw))
}

/// Turns a serde-saphyr error into a line and an operator-facing message. The library appends
/// " at line N, column M" and sometimes a hint meant for programmers; the line is reported
/// separately and the hint is replaced by ours.
pub(crate) fn yaml_error(err: serde_saphyr::Error) -> YamlError {
    let line = err
        .location()
        .and_then(|l| usize::try_from(l.line()).ok())
        .filter(|l| *l > 0);
    // Alias and snippet wrappers only add locations; the cause is inside.
    let mut inner = &err;
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = inner
    {
        inner = error;
    }
    let mut fix = None;
    let message = match inner {
        serde_saphyr::Error::DuplicateMappingKey { key, .. } => {
            let key = key.as_deref().unwrap_or("");
            fix = Some(format!(
                "keep a single `{key}` key in this mapping (remove or merge the other one)"
            ));
            format!("duplicate key `{key}` (YAML keys must be unique within a mapping)")
        }
        serde_saphyr::Error::MultipleDocuments { .. }
        | serde_saphyr::Error::Budget {
            breach: serde_saphyr::budget::BudgetBreach::Documents { .. },
            ..
        } => {
            fix = Some("keep a single document: remove the `---` separators".to_owned());
            "the file holds more than one YAML document (`---`)".to_owned()
        }
        serde_saphyr::Error::Budget { breach, .. } => {
            fix = Some(
                "point the daemon at the real configuration file; anchors and aliases that \
                 expand to huge documents are refused"
                    .to_owned(),
            );
            format!(
                "the document is too large or too deeply nested to be a configuration file \
                 (limit reached: {breach:?})"
            )
        }
        other => strip_location(&other.to_string()),
    };
    YamlError { line, message, fix }
}

/// Removes the trailing " at line N, column M" (and any alias notes after it) that
/// serde-saphyr adds to messages.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(idx) => message[..idx].to_owned(),
        None => message.to_owned(),
    }
}

fn line_of(location: &Location) -> Option<usize> {
    usize::try_from(location.line()).ok().filter(|l| *l > 0)
}

/// The exact source text of a node, given where it is defined (for an alias: the anchored
/// definition, not the `*alias` token).
fn source_text<'a>(source: &'a str, defined: &Location) -> Option<&'a str> {
    let span = defined.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    source.get(start..start.checked_add(len)?)
}

fn convert(source: &str, raw: Spanned<RawNode>) -> Node {
    let Spanned {
        value: raw,
        referenced,
        defined,
    } = raw;
    let line = line_of(&referenced);
    let value = match raw {
        RawNode::Null => Value::Null,
        RawNode::Str(text) => Value::Scalar {
            text,
            kind: ScalarKind::Str,
        },
        RawNode::Other(kind, fallback) => {
            // The parser turned a plain scalar into a number or boolean; keep what was written.
            let text = source_text(source, &defined)
                .map(str::to_owned)
                .unwrap_or(fallback);
            Value::Scalar { text, kind }
        }
        RawNode::Seq(items) => Value::Seq(items.into_iter().map(|n| convert(source, n)).collect()),
        RawNode::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key_line = line_of(&k.referenced);
                    let key = match convert(source, k).value {
                        Value::Scalar { text, .. } => text,
                        Value::Null => String::new(),
                        Value::Seq(_) | Value::Map(_) => "<complex key>".to_owned(),
                    };
                    let mut value = convert(source, v);
                    // A block mapping or list starts on the line after its key; operators look
                    // for the key, so a container value is located at its key's line.
                    if matches!(value.value, Value::Map(_) | Value::Seq(_)) && key_line.is_some() {
                        value.line = key_line;
                    }
                    Entry {
                        key,
                        key_line,
                        value,
                    }
                })
                .collect(),
        ),
    };
    Node {
        value,
        line,
        env: None,
    }
}

/// What serde-saphyr hands over for one node, before source text is attached.
enum RawNode {
    Null,
    Str(String),
    /// A scalar the parser typed as bool/number; the string is a formatted fallback used only if
    /// the source text cannot be recovered.
    Other(ScalarKind, String),
    Seq(Vec<Spanned<RawNode>>),
    Map(Vec<(Spanned<RawNode>, Spanned<RawNode>)>),
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawNode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }

    fn visit_none<E>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawNode, D::Error> {
        RawNode::deserialize(deserializer)
    }

    fn visit_bool<E>(self, v: bool) -> Result<RawNode, E> {
        Ok(RawNode::Other(ScalarKind::Bool, v.to_string()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<RawNode, E> {
        Ok(RawNode::Other(ScalarKind::Int, v.to_string()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<RawNode, E> {
        Ok(RawNode::Other(ScalarKind::Int, v.to_string()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<RawNode, E> {
        Ok(RawNode::Other(ScalarKind::Int, v.to_string()))
    }

    fn visit_u128<E>(self, v: u128) -> Result<RawNode, E> {
        Ok(RawNode::Other(ScalarKind::Int, v.to_string()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<RawNode, E> {
        Ok(RawNode::Other(ScalarKind::Float, v.to_string()))
    }

    fn visit_str<E>(self, v: &str) -> Result<RawNode, E> {
        Ok(RawNode::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<RawNode, E> {
        Ok(RawNode::Str(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<RawNode, E> {
        // `!!binary` values: keep them as text when they are UTF-8 (never one of our keys).
        Ok(RawNode::Str(String::from_utf8_lossy(v).into_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(RawNode::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNode, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(RawNode::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_get<'a>(node: &'a Node, key: &str) -> &'a Node {
        match &node.value {
            Value::Map(entries) => &entries.iter().find(|e| e.key == key).expect(key).value,
            other => panic!("not a map: {other:?}"),
        }
    }

    fn text(node: &Node) -> &str {
        match &node.value {
            Value::Scalar { text, .. } => text,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    #[test]
    fn scalars_keep_their_source_text() {
        let src = "a: 01234567890123456789012345678901\nb: 0123\nc: 1e3\nd: yes\ne: \"q\"\nf: &x 007\ng: *x\ny: 1\n";
        let root = parse(src).unwrap();
        assert_eq!(
            text(map_get(&root, "a")),
            "01234567890123456789012345678901"
        );
        assert_eq!(text(map_get(&root, "b")), "0123");
        assert_eq!(text(map_get(&root, "c")), "1e3");
        assert_eq!(text(map_get(&root, "d")), "yes");
        assert_eq!(text(map_get(&root, "e")), "q");
        assert_eq!(text(map_get(&root, "f")), "007");
        assert_eq!(text(map_get(&root, "g")), "007");
        // `y` is a YAML 1.1 boolean when untyped; as a key it must stay `y`.
        assert_eq!(text(map_get(&root, "y")), "1");
    }

    #[test]
    fn nodes_carry_lines() {
        let src = "# comment\na:\n  b:\n    - x\n    - y\n";
        let root = parse(src).unwrap();
        let b = map_get(map_get(&root, "a"), "b");
        let Value::Seq(items) = &b.value else {
            panic!("seq")
        };
        // A block list is located at its key's line; its items at their own lines.
        assert_eq!(b.line, Some(3));
        assert_eq!(items[0].line, Some(4));
        assert_eq!(items[1].line, Some(5));
        let Value::Map(entries) = &root.value else {
            panic!("map")
        };
        assert_eq!(entries[0].key_line, Some(2));
    }

    #[test]
    fn empty_and_comment_only_documents_are_null() {
        assert_eq!(parse("").unwrap().value, Value::Null);
        assert_eq!(parse("# nothing\n").unwrap().value, Value::Null);
    }

    #[test]
    fn duplicate_keys_are_rejected_with_their_line() {
        let err = parse("a:\n  b: 1\n  c: 2\n  b: 3\n").unwrap_err();
        assert_eq!(err.line, Some(4));
        assert!(err.message.contains("duplicate key `b`"), "{}", err.message);
    }

    #[test]
    fn syntax_errors_report_their_line() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(!err.message.contains(" at line "), "{}", err.message);
    }

    #[test]
    fn billion_laughs_is_rejected() {
        let mut doc = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for i in 1..10u8 {
            let prev = (b'a' + i - 1) as char;
            let cur = (b'a' + i) as char;
            let refs = vec![format!("*{prev}"); 9].join(",");
            doc.push_str(&format!("{cur}: &{cur} [{refs}]\n"));
        }
        let err = parse(&doc).unwrap_err();
        assert!(err.message.contains("too large"), "{}", err.message);
    }

    #[test]
    fn multiple_documents_are_rejected() {
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(err.message.contains("more than one YAML document"));
    }

    #[test]
    fn non_finite_floats_elsewhere_are_fine() {
        let root = parse("x: .inf\ny: .nan\n").unwrap();
        assert_eq!(text(map_get(&root, "x")), ".inf");
    }

    #[test]
    fn json_converts_and_env_marking_clears_lines() {
        let json: serde_json::Value =
            serde_json::from_str(r#"{"https://x": ["DELA(o, aws)", 5, true, null]}"#).unwrap();
        let mut node = Node::from_json(&json);
        node.line = Some(3);
        node.mark_env("DD_ADDITIONAL_ENDPOINTS");
        assert_eq!(node.line, None);
        let list = map_get(&node, "https://x");
        let Value::Seq(items) = &list.value else {
            panic!("seq")
        };
        assert_eq!(text(&items[0]), "DELA(o, aws)");
        assert_eq!(text(&items[1]), "5");
        assert_eq!(items[3].value, Value::Null);
        assert_eq!(items[2].env.as_deref(), Some("DD_ADDITIONAL_ENDPOINTS"));
    }
}
