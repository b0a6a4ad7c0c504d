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
            Event::SoftBreak | Event::HardBreak => text.push(' '),
            Event::End(
                TagEnd::Paragraph
                | TagEnd::Heading(_)
                | TagEnd::Item
                | TagEnd::CodeBlock
                | TagEnd::TableRow,
            ) => text.push('\n'),
            Event::End(TagEnd::TableCell) => text.push(' '),
            _ => {}
        }
    }
    text.trim().to_owned()
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
}
