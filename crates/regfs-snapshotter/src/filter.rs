//! containerd's List filter syntax, the part snapshotters see.
//!
//! A request carries filter strings that are OR-ed; each string is `,`-separated selectors that
//! are AND-ed. A selector is a field path (`name`, `parent`, `kind`, `labels.<key>` with the key
//! optionally double-quoted) optionally followed by `==`, `!=` or `~=` and a value (quoted or
//! bare). `ctr snapshots ls` sends no filter; containerd's metadata layer sends
//! `labels."containerd.io/snapshot.ref"==<chain id>,parent=="<key>"` when a Prepare answered
//! ALREADY_EXISTS. A string that does not parse matches everything (and is logged): containerd
//! re-checks what it asked for, so listing too much is safe where listing too little is not.
//! `~=` (a regular expression upstream) is approximated as a substring test.

use crate::snapshot::Info;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal,
    NotEqual,
    Matches,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    path: Vec<String>,
    op: Option<(Op, String)>,
}

/// A parsed List filter: OR of AND-ed selectors. `None` in the outer list means "match all".
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    any_of: Vec<Option<Vec<Selector>>>,
}

impl Filter {
    pub(crate) fn parse(filters: &[String]) -> Filter {
        let any_of = filters
            .iter()
            .filter(|f| !f.trim().is_empty())
            .map(|f| match parse_conjunction(f) {
                Ok(sel) => Some(sel),
                Err(reason) => {
                    tracing::warn!(filter = %f, %reason, "unsupported snapshot filter, listing everything");
                    None
                }
            })
            .collect();
        Filter { any_of }
    }

    pub(crate) fn matches(&self, info: &Info) -> bool {
        self.any_of.is_empty()
            || self.any_of.iter().any(|conj| match conj {
                None => true,
                Some(selectors) => selectors.iter().all(|s| s.matches(info)),
            })
    }
}

impl Selector {
    fn matches(&self, info: &Info) -> bool {
        let field: Option<String> = match self.path.as_slice() {
            [f] if f == "name" => Some(info.name.clone()),
            [f] if f == "parent" => info.parent.clone(),
            [f] if f == "kind" => Some(info.kind.to_string()),
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => {
                info.labels.get(&rest.join(".")).cloned()
            }
            _ => None,
        };
        match &self.op {
            None => field.is_some_and(|v| !v.is_empty()),
            Some((Op::Equal, want)) => field.as_deref().unwrap_or("") == want,
            Some((Op::NotEqual, want)) => field.as_deref().unwrap_or("") != want,
            Some((Op::Matches, want)) => field.is_some_and(|v| v.contains(want.as_str())),
        }
    }
}

fn parse_conjunction(s: &str) -> Result<Vec<Selector>, String> {
    let mut p = Parser {
        s: s.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        p.skip_ws();
        out.push(p.selector()?);
        p.skip_ws();
        match p.peek() {
            None => return Ok(out),
            Some(b',') => p.i += 1,
            Some(c) => return Err(format!("unexpected {:?} at {}", c as char, p.i)),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn selector(&mut self) -> Result<Selector, String> {
        let mut path = vec![self.field()?];
        while self.peek() == Some(b'.') {
            self.i += 1;
            path.push(self.field()?);
        }
        self.skip_ws();
        let op = match (self.peek(), self.s.get(self.i + 1)) {
            (Some(b'='), Some(b'=')) => Op::Equal,
            (Some(b'!'), Some(b'=')) => Op::NotEqual,
            (Some(b'~'), Some(b'=')) => Op::Matches,
            _ => return Ok(Selector { path, op: None }),
        };
        self.i += 2;
        self.skip_ws();
        let value = self.value()?;
        Ok(Selector {
            path,
            op: Some((op, value)),
        })
    }

    fn field(&mut self) -> Result<String, String> {
        if self.peek() == Some(b'"') {
            return self.quoted();
        }
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            self.i += 1;
        }
        if start == self.i {
            return Err(format!("expected a field name at {start}"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn value(&mut self) -> Result<String, String> {
        if self.peek() == Some(b'"') {
            return self.quoted();
        }
        let start = self.i;
        while self.peek().is_some_and(|c| c != b',') {
            self.i += 1;
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i])
            .trim_end()
            .to_owned())
    }

    /// A Go-style double-quoted string (the common escapes).
    fn quoted(&mut self) -> Result<String, String> {
        let start = self.i;
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(format!("unterminated quote at {start}")),
                Some(b'"') => {
                    self.i += 1;
                    return String::from_utf8(out).map_err(|e| e.to_string());
                }
                Some(b'\\') => {
                    let c = self
                        .s
                        .get(self.i + 1)
                        .ok_or_else(|| format!("dangling escape at {}", self.i))?;
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        other => *other,
                    });
                    self.i += 2;
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Kind;
    use std::time::SystemTime;

    fn info() -> Info {
        Info {
            name: "ns/3/sha256:abc".into(),
            parent: Some("ns/2/sha256:def".into()),
            kind: Kind::Committed,
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            labels: [(
                "containerd.io/snapshot.ref".to_string(),
                "sha256:abc".to_string(),
            )]
            .into(),
        }
    }

    #[test]
    fn filters_select_what_containerd_asks_for() {
        let cases: &[(&[&str], bool)] = &[
            (&[], true),
            (&[""], true),
            (
                &[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="ns/2/sha256:def""#],
                true,
            ),
            (
                &[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="ns/9/x""#],
                false,
            ),
            (&["kind==committed"], true),
            (&["kind==active"], false),
            (&["kind==active", "name==ns/3/sha256:abc"], true),
            (&["kind!=active"], true),
            (&["labels.containerd.io/snapshot.ref"], true),
            (&["labels.nothing"], false),
            (&["name~=sha256"], true),
            (&["parent"], true),
            (&["unknown==x"], false),
            // unparsable: matches everything rather than hiding snapshots
            (&["labels.\"unterminated==x"], true),
            (&["==x"], true),
        ];
        for (filters, want) in cases {
            let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                Filter::parse(&filters).matches(&info()),
                *want,
                "{filters:?}"
            );
        }
    }
}
