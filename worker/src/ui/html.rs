//! HTML for the auditors' page: escaping, the layout every page shares, and its stylesheet.
//! Every text that comes from GitLab (names, paths, usernames) goes through [`esc`].

use std::fmt::Write as _;

/// Escapes text for HTML content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query parameter value.
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A whole page: the header with the search box, then `body` (already escaped HTML).
pub fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · GitLab access</title>
<link rel="stylesheet" href="/ui.css">
</head>
<body>
<header>
<a class="home" href="/">GitLab access</a>
<nav><a href="/">Snapshots</a> <a href="/changes">Changes</a></nav>
<form class="search" method="get" action="/search" role="search">
<input type="search" name="q" placeholder="user, group or project" aria-label="Search users and resources" maxlength="200">
<button type="submit">Search</button>
</form>
</header>
<main>
<h1>{title}</h1>
{body}
</main>
<footer>Read-only. Every answer names the snapshot it stands on.</footer>
</body>
</html>
"#,
        title = esc(title),
    )
}

pub const CSS: &str = r#"
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1f2328; background: #fff; }
header { display: flex; gap: 1.5em; align-items: center; padding: .6em 1.2em; background: #292961; color: #fff; }
header a { color: #fff; text-decoration: none; }
header .home { font-weight: 600; }
header nav a { margin-right: 1em; }
header .search { margin-left: auto; }
main { padding: 1em 1.6em; max-width: 1200px; }
footer { padding: 1em 1.6em; color: #656d76; font-size: 13px; }
h1 { font-size: 22px; margin: .3em 0 .6em; }
h2 { font-size: 17px; margin: 1.4em 0 .5em; }
table { border-collapse: collapse; width: 100%; margin: .5em 0 1em; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #d0d7de; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
.basis { background: #f6f8fa; border: 1px solid #d0d7de; padding: .5em .8em; border-radius: 6px; }
.partial { color: #9a6700; font-weight: 600; }
.ok { color: #1a7f37; }
.broken { color: #cf222e; font-weight: 600; }
.chain { white-space: nowrap; }
.chain .arrow { color: #656d76; padding: 0 .25em; }
.muted { color: #656d76; }
.actions a, .actions button { margin-right: 1em; }
form.inline { display: inline-flex; gap: .5em; align-items: center; flex-wrap: wrap; margin: .4em 0; }
code { background: #f6f8fa; padding: .1em .3em; border-radius: 4px; }
.error { color: #cf222e; }
"#;
