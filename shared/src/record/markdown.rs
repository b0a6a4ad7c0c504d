//! Markdown to searchable plain text: the words a reader sees, without markup, link targets or
//! HTML tags; code keeps its text.

use pulldown_cmark::{Event, Parser, TagEnd};

/// The visible text of `markdown`, one block per line.
pub(super) fn to_text(markdown: &str) -> String {
    let mut text = String::with_capacity(markdown.len());
    for event in Parser::new(markdown) {
        match event {
            Event::Text(part)
            | Event::Code(part)
            | Event::InlineMath(part)
            | Event::DisplayMath(part) => text.push_str(&part),
            // An HTML block's words are only in its raw lines (`<div align="center">`, then
            // the words, then `</div>`): keep what is outside the tags.
            Event::Html(part) => push_outside_tags(&mut text, &part),
            Event::SoftBreak | Event::HardBreak => text.push(' '),
            Event::End(
                TagEnd::Paragraph
                | TagEnd::Heading(_)
                | TagEnd::Item
                | TagEnd::CodeBlock
                | TagEnd::HtmlBlock
                | TagEnd::TableRow,
            ) => text.push('\n'),
            Event::End(TagEnd::TableCell) => text.push(' '),
            _ => {}
        }
    }
    text.trim().to_owned()
}

/// Appends the words of a raw HTML line, without its tags, as one space-separated run.
fn push_outside_tags(text: &mut String, html: &str) {
    let mut in_tag = false;
    let mut words = String::new();
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                words.push(' ');
            }
            c if !in_tag => words.push(c),
            _ => {}
        }
    }
    for word in words.split_whitespace() {
        if !text.is_empty() && !text.ends_with([' ', '\n']) {
            text.push(' ');
        }
        text.push_str(word);
    }
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
}
