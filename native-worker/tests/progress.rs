//! Progress on long commands: on a terminal (a pseudo-terminal from `script`, as a person
//! running the command has) `gen-corpus`, `run --replay` and `publish` draw a bar; with stderr
//! captured they log plain lines instead, and never draw one.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_native-worker");

/// Runs the binary with `args` in `dir` on a pseudo-terminal; returns what it drew.
fn on_terminal(dir: &Path, args: &[&str]) -> String {
    let command = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|arg| format!("'{arg}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(dir)
        .env("PUBSEARCH_DATA_DIR", dir.join("data"))
        .env("PUBSEARCH_ADMIN_ADDR", "off")
        .env("PUBSEARCH_SERVE_ADDR", "off")
        .env("PUBSEARCH_PUBLISH_MINUTES", "0")
        .output()
        .expect("script (bsdutils) runs");
    let drawn = String::from_utf8_lossy(&output.stdout).replace('\r', "\n");
    assert!(output.status.success(), "{args:?} failed:\n{drawn}");
    drawn
}

/// Runs the binary with `args` in `dir`, stderr captured; returns stderr.
fn captured(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("PUBSEARCH_DATA_DIR", dir.join("data"))
        .env("PUBSEARCH_ADMIN_ADDR", "off")
        .env("PUBSEARCH_SERVE_ADDR", "off")
        .env("PUBSEARCH_PUBLISH_MINUTES", "0")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{args:?} failed:\n{stderr}");
    stderr
}

#[test]
fn long_commands_draw_a_bar_on_a_terminal_and_log_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let records = "3000";

    let logged = captured(
        dir.path(),
        &["gen-corpus", "--records", records, "--out", "a.ndjson"],
    );
    assert!(
        logged.contains("gen-corpus: 1000 of 3000 events"),
        "{logged}"
    );
    assert!(!logged.contains('█'), "no bar in a log:\n{logged}");

    let drawn = on_terminal(
        dir.path(),
        &["gen-corpus", "--records", records, "--out", "b.ndjson"],
    );
    assert!(drawn.contains("gen-corpus ["), "{drawn}");
    assert!(drawn.contains("/3,000 events"), "{drawn}");
    assert_eq!(
        std::fs::read(dir.path().join("a.ndjson")).unwrap(),
        std::fs::read(dir.path().join("b.ndjson")).unwrap(),
        "the display changes nothing written"
    );

    let drawn = on_terminal(dir.path(), &["run", "--replay", "a.ndjson"]);
    assert!(drawn.contains("replay ["), "{drawn}");
    assert!(drawn.contains("/3,000 events"), "{drawn}");

    let drawn = on_terminal(dir.path(), &["publish"]);
    assert!(drawn.contains("publish"), "{drawn}");
    assert!(
        ["building", "verifying", "uploading", "pointer"]
            .iter()
            .any(|stage| drawn.contains(stage)),
        "a stage is named:\n{drawn}"
    );
}
