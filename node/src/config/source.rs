//! Where a key sits in a TOML file. Parse errors come with a byte offset and semantic errors
//! with a key path; operators want both as `file:line: key`. This index maps each `key = ...`
//! line to its full dotted path (`routes[1].pool`, `pools.api.endpoints`).

/// (1-based line, dotted key path) for every key line, in file order.
pub struct KeyIndex {
    keys: Vec<(usize, String)>,
    line_starts: Vec<usize>,
}

impl KeyIndex {
    pub fn new(src: &str) -> KeyIndex {
        let mut keys = Vec::new();
        let mut table = String::new();
        let mut array_counts: Vec<(String, usize)> = Vec::new();
        let mut line_starts = vec![0];
        for (i, b) in src.bytes().enumerate() {
            if b == b'\n' {
                line_starts.push(i + 1);
            }
        }
        for (n, line) in src.lines().enumerate() {
            let t = line.trim();
            if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
                let name = unquote_path(name);
                let idx = match array_counts.iter_mut().find(|(k, _)| *k == name) {
                    Some((_, c)) => {
                        *c += 1;
                        *c
                    }
                    None => {
                        array_counts.push((name.clone(), 0));
                        0
                    }
                };
                table = format!("{name}[{idx}]");
                keys.push((n + 1, table.clone()));
            } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
                // `[routes.x]` after `[[routes]]` refers to the latest array element.
                let name = unquote_path(name);
                table = match array_counts
                    .iter()
                    .find(|(k, _)| name.starts_with(&format!("{k}.")))
                {
                    Some((k, c)) => format!("{k}[{c}]{}", &name[k.len()..]),
                    None => name,
                };
                keys.push((n + 1, table.clone()));
            } else if let Some((k, _)) = t.split_once('=') {
                let k = unquote_path(k);
                let bare = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
                if !t.starts_with('#') && !k.is_empty() && k.chars().all(bare) {
                    let path = if table.is_empty() {
                        k
                    } else {
                        format!("{table}.{k}")
                    };
                    keys.push((n + 1, path));
                }
            }
        }
        KeyIndex { keys, line_starts }
    }

    pub fn line_of_offset(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset)
    }

    /// The key a byte offset belongs to: the last key line at or before it.
    pub fn key_at_line(&self, line: usize) -> Option<&str> {
        let i = self.keys.partition_point(|(l, _)| *l <= line);
        (i > 0).then(|| self.keys[i - 1].1.as_str())
    }

    /// Whether the file has anything under the top-level section `name` (`[tls]`,
    /// `[[tls.certificates]]`, `routes = []`).
    pub fn has_section(&self, name: &str) -> bool {
        self.keys.iter().any(|(_, k)| {
            k.strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    /// The line of `path`, or of its closest listed ancestor (`routes[1].hosts[0]` falls back
    /// to `routes[1].hosts`, then `routes[1]`).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some((l, _)) = self.keys.iter().find(|(_, k)| k == p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

fn unquote_path(s: &str) -> String {
    s.split('.')
        .map(|part| part.trim().trim_matches('"').trim_matches('\''))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"# comment
[node]
admin_addr = "127.0.0.1:1"

[[routes]]
hosts = ["a"]
pool = "x"

[[routes]]
hosts = [
  "b",
]
pool = "y"

[pools.api]
endpoints = ["127.0.0.1:1"]
"#;

    #[test]
    fn maps_lines_and_paths_both_ways() {
        let idx = KeyIndex::new(SRC);
        assert_eq!(idx.line_of("node.admin_addr"), Some(3));
        assert_eq!(idx.line_of("routes[1].pool"), Some(13));
        assert_eq!(idx.line_of("routes[1].hosts[0]"), Some(10));
        assert_eq!(idx.line_of("pools.api.endpoints[3]"), Some(16));
        assert_eq!(idx.line_of("nothing.here"), None);
        assert!(idx.has_section("routes") && idx.has_section("pools") && idx.has_section("node"));
        assert!(!idx.has_section("pool") && !idx.has_section("tls"));
        assert_eq!(idx.key_at_line(11), Some("routes[1].hosts"));
        assert_eq!(idx.key_at_line(16), Some("pools.api.endpoints"));
        let off = SRC.find("\"b\"").unwrap();
        assert_eq!(idx.line_of_offset(off), 11);
    }
}
