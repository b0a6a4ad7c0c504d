//! Markdown to searchable plain text: the words a reader sees, without markup, link targets or
//! HTML tags; code keeps its text.

use pulldown_cmark::{Event, Parser, TagEnd};

/// The visible text of `markdown`, one block per line.
pub(super) fn to_text(markdown: &str) -> String {
    let mut text = String::with_capacity(markdown.len());
    let mut html = HtmlText::default();
    for event in Parser::new(markdown) {
        match event {
            Event::Text(part)
            | Event::Code(part)
            | Event::InlineMath(part)
            | Event::DisplayMath(part) => text.push_str(&part),
            // An HTML block's words are only in its raw lines (`<div align="center">`, then
            // the words, then `</div>`): keep what is outside the tags.
            Event::Html(part) => html.feed(&mut text, &part),
            Event::SoftBreak | Event::HardBreak => text.push(' '),
            Event::End(
                TagEnd::Paragraph
                | TagEnd::Heading(_)
                | TagEnd::Item
                | TagEnd::CodeBlock
                | TagEnd::TableRow,
            ) => text.push('\n'),
            Event::End(TagEnd::HtmlBlock) => {
                html = HtmlText::default();
                // A block of only a comment or a script shows nothing, not an empty line.
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
            }
            Event::End(TagEnd::TableCell) => text.push(' '),
            _ => {}
        }
    }
    text.trim().to_owned()
}

/// Where an HTML block's lines, read one after another, stand.
#[derive(Default)]
enum HtmlText {
    /// Between tags: words a reader sees.
    #[default]
    Text,
    /// Inside a tag; for `<script` and `<style`, the element whose contents follow it.
    Tag(Option<&'static str>),
    /// Inside `<!-- … -->`.
    Comment,
    /// Inside a `script` or `style` element, until its end tag.
    Hidden(&'static str),
}

/// Elements whose contents no reader sees.
const HIDDEN_ELEMENTS: [&str; 2] = ["script", "style"];

impl HtmlText {
    /// Appends the words of one raw HTML line: the text outside tags, comments and hidden
    /// elements, with character references decoded, as one space-separated run.
    fn feed(&mut self, text: &mut String, line: &str) {
        let mut visible = String::new();
        let mut rest = line;
        while !rest.is_empty() {
            let (state, consumed) = match *self {
                HtmlText::Text => match rest.find('<') {
                    None => {
                        visible.push_str(rest);
                        (HtmlText::Text, rest.len())
                    }
                    Some(at) => {
                        visible.push_str(&rest[..at]);
                        visible.push(' ');
                        let tag = &rest[at + 1..];
                        if tag.starts_with("!--") {
                            (HtmlText::Comment, at + 4)
                        } else {
                            let hidden = HIDDEN_ELEMENTS
                                .into_iter()
                                .find(|name| starts_with_ignore_case(tag, name));
                            (HtmlText::Tag(hidden), at + 1)
                        }
                    }
                },
                HtmlText::Tag(hidden) => match rest.find('>') {
                    None => (HtmlText::Tag(hidden), rest.len()),
                    Some(at) => (hidden.map_or(HtmlText::Text, HtmlText::Hidden), at + 1),
                },
                HtmlText::Comment => match rest.find("-->") {
                    None => (HtmlText::Comment, rest.len()),
                    Some(at) => (HtmlText::Text, at + 3),
                },
                HtmlText::Hidden(name) => {
                    let end = rest.char_indices().find(|&(at, c)| {
                        c == '<' && starts_with_ignore_case(&rest[at + 1..], &format!("/{name}"))
                    });
                    match end {
                        None => (HtmlText::Hidden(name), rest.len()),
                        Some((at, _)) => (HtmlText::Tag(None), at + 1),
                    }
                }
            };
            *self = state;
            rest = &rest[consumed..];
        }
        for word in decode_references(&visible).split_whitespace() {
            if !text.is_empty() && !text.ends_with([' ', '\n']) {
                text.push(' ');
            }
            text.push_str(word);
        }
    }
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// Decodes the character references raw HTML is written with: the five XML ones, `&nbsp;` and
/// numeric ones. Others stay as written (markdown's own text arrives decoded by the parser).
fn decode_references(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let name = &rest[1..end];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                _ => name.strip_prefix('#').and_then(|number| {
                    match number.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => number.parse().ok(),
                    }
                    .and_then(char::from_u32)
                }),
            }?;
            Some((c, end + 1))
        });
        match decoded {
            Some((c, length)) => {
                out.push(c);
                rest = &rest[length..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::to_text;

    #[test]
    fn markup_goes_words_stay() {
        let text = to_text(
            "# Title\n\nSome *emphasis* and a [link](https://x.example) <b>bold</b>.\n\n- one\n- two\n\n```rust\nfn main() {}\n```\n",
        );
        assert_eq!(
            text,
            "Title\nSome emphasis and a link bold.\none\ntwo\nfn main() {}"
        );
    }

    #[test]
    fn html_blocks_keep_their_words() {
        let text = to_text(
            "Intro.\n\n<div align=\"center\">\n<img src=\"a.png\">Centred words\nand more</div>\n\nOutro.\n",
        );
        assert_eq!(text, "Intro.\nCentred words and more\nOutro.");
    }

    #[test]
    fn html_comments_scripts_and_styles_stay_hidden() {
        let text = to_text(concat!(
            "Intro.\n\n<!--\nsecret draft notes\n-->\n\n",
            "<div>a &amp; b &#233;t&#xE9; &copy;</div>\n\n",
            "<script>\nvar tracking = 1;\n</SCRIPT>\n\n",
            "<style>p { color: red }</style>\n\nOutro.\n",
        ));
        assert_eq!(text, "Intro.\na & b été &copy;\nOutro.");
    }
}
