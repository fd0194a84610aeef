//! Where a key path (`apis[2].catalog.owner`) is in the config text: the line and column of
//! its key, found by walking a span-keeping parse (`toml_edit`). A path that goes deeper than
//! the file (a missing key) resolves to the deepest part that exists, such as the `[[apis]]`
//! header of the entry that lacks the key.

use toml_edit::{ImDocument, Item, Table, TableLike, Value};

/// A step of a key path.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// A place in the parsed document: tables of `[[x]]` arrays are not `Item`s.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn table_like(self) -> Option<&'a dyn TableLike> {
        match self {
            Node::Item(i) => i.as_table_like(),
            Node::Table(t) => Some(t),
            Node::Value(v) => v.as_inline_table().map(|t| t as &dyn TableLike),
        }
    }

    fn step(self, step: &Step<'_>) -> Option<(Node<'a>, Option<std::ops::Range<usize>>)> {
        match *step {
            Step::Key(k) => {
                let (key, item) = self.table_like()?.get_key_value(k)?;
                Some((Node::Item(item), key.span().or_else(|| item.span())))
            }
            Step::Index(i) => match self {
                Node::Item(Item::ArrayOfTables(a)) => {
                    let t = a.get(i)?;
                    Some((Node::Table(t), t.span()))
                }
                Node::Item(item) => {
                    let v = item.as_array()?.get(i)?;
                    Some((Node::Value(v), v.span()))
                }
                Node::Value(v) => {
                    let v = v.as_array()?.get(i)?;
                    Some((Node::Value(v), v.span()))
                }
                Node::Table(_) => None,
            },
        }
    }
}

/// A key and the indexes after it: `targets[0]` -> ("targets", [0]); the key may hold dots.
fn key_and_indexes(part: &str) -> Option<(&str, Vec<usize>)> {
    let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
    if name.is_empty() {
        return None;
    }
    let mut indexes = Vec::new();
    while let Some(inner) = rest.strip_prefix('[') {
        let end = inner.find(']')?;
        indexes.push(inner[..end].parse().ok()?);
        rest = &inner[end + 1..];
    }
    rest.is_empty().then_some((name, indexes))
}

type Span = std::ops::Range<usize>;

/// Walks `parts` from `node`: (how many parts were found, the span of the deepest). A name may
/// hold dots (`upstreams.orders.v2`): each way of joining the next parts is tried, and the
/// walk that finds the most wins.
fn walk(node: Node<'_>, parts: &[&str]) -> (usize, Option<Span>) {
    let mut best = (0, None);
    for take in 1..=parts.len() {
        // Only the last joined part may carry indexes.
        if parts[..take - 1].iter().any(|p| p.contains('[')) {
            break;
        }
        let joined = parts[..take].join(".");
        let Some((name, indexes)) = key_and_indexes(&joined) else {
            continue;
        };
        let Some((mut at, mut span)) = node.step(&Step::Key(name)) else {
            continue;
        };
        let mut complete = true;
        for i in indexes {
            match at.step(&Step::Index(i)) {
                Some((next, s)) => {
                    at = next;
                    span = s.or(span);
                }
                None => {
                    complete = false;
                    break;
                }
            }
        }
        let (deeper, deeper_span) = if complete {
            walk(at, &parts[take..])
        } else {
            (0, None)
        };
        let found = (take + deeper, deeper_span.or(span));
        if found.0 > best.0 {
            best = found;
        }
    }
    best
}

/// The 1-based line and column of `key_path` in `src` (of its deepest existing part), and the
/// text of that line; None when the text does not parse or nothing of the path is there.
pub fn locate_key(src: &str, key_path: &str) -> Option<(usize, usize, String)> {
    let doc = ImDocument::parse(src).ok()?;
    let parts: Vec<&str> = key_path.split('.').filter(|p| !p.is_empty()).collect();
    let (_, span) = walk(Node::Table(doc.as_table()), &parts);
    span.map(|span| super::error::locate(src, span.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"[server]
listen = ["127.0.0.1:1"]

[[apis]]
name = "a"
base_path = "/a"

[[apis]]
name = "b"
base_path = "/b"
[apis.catalog]
owner = "nobody"
tags = ["x", "y"]

[teams.ops]
name = "Ops"
contacts = [{ name = "A", email = "bad" }]

[upstreams.orders]
targets = [{ addr = "127.0.0.1:1" }]

[upstreams."orders.v2"]
targets = [{ addr = "127.0.0.1:2" }]
"#;

    #[test]
    fn parts_split_into_a_key_and_indexes() {
        assert_eq!(key_and_indexes("tags[1]"), Some(("tags", vec![1])));
        assert_eq!(key_and_indexes("orders.v2"), Some(("orders.v2", vec![])));
        assert_eq!(key_and_indexes("a[1][2]"), Some(("a", vec![1, 2])));
        assert_eq!(key_and_indexes("a[x]"), None);
        assert_eq!(key_and_indexes("a[1]b"), None);
        assert_eq!(key_and_indexes("[1]"), None);
    }

    #[test]
    fn keys_are_found_where_they_are_written() {
        let line = |p: &str| locate_key(SRC, p).map(|(l, c, _)| (l, c));
        assert_eq!(line("apis[1].catalog.owner"), Some((12, 1)));
        assert_eq!(line("apis[1].catalog.tags[1]"), Some((13, 14)));
        assert_eq!(line("apis[0].name"), Some((5, 1)));
        assert_eq!(line("teams.ops.contacts[0].email"), Some((17, 27)));
        assert_eq!(line("server.listen"), Some((2, 1)));
        // A name with a dot in it.
        assert_eq!(line("upstreams.orders.v2.targets[0].addr"), Some((23, 14)));
        assert_eq!(line("upstreams.orders.targets[0].addr"), Some((20, 14)));
        let (_, _, text) = locate_key(SRC, "apis[1].base_path").expect("found");
        assert_eq!(text, "base_path = \"/b\"");
    }

    #[test]
    fn a_missing_key_points_at_its_deepest_existing_parent() {
        // apis[0] has no catalog: its [[apis]] header.
        assert_eq!(
            locate_key(SRC, "apis[0].catalog.owner").map(|(l, _, _)| l),
            Some(4)
        );
        assert_eq!(
            locate_key(SRC, "apis[1].catalog.successor").map(|(l, _, _)| l),
            Some(11)
        );
        assert_eq!(locate_key(SRC, "nothing.here"), None);
        // An index past the end points at the array, not at another element.
        assert_eq!(locate_key(SRC, "apis[7].name").map(|(l, _, _)| l), Some(4));
        assert_eq!(locate_key("not = [toml", "not"), None);
    }
}
