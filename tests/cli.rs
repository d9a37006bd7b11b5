//! The command line as a user meets it: a user error is one line on stderr (no backtrace,
//! whatever `RUST_BACKTRACE` says) with exit code 1, and logs written to a pipe carry no
//! ANSI colour codes; `LOGPLAYER_INSECURE` reads as a boolean does elsewhere, and
//! `LOGPLAYER_RUNTIME` takes one of two runtimes.

mod common;

use std::process::Command;

#[test]
fn a_user_error_is_one_plain_line_with_exit_code_one() {
    let out = Command::new(common::bin())
        .env("LOGPLAYER_INSECURE", "true")
        .args(["player", "--shard-map", "/nonexistent/map.yaml"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Log lines (the `--insecure` warning) aside, the error is one line.
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains(" WARN ")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains("/nonexistent/map.yaml"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI codes in a pipe: {stderr:?}"
    );
}

#[test]
fn each_cause_of_an_error_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let out = Command::new(common::bin())
        .env("LOGPLAYER_INSECURE", "true")
        .args(["shard", "--id", "s0", "--listen", "127.0.0.1:0", "--data"])
        .arg(file.join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("(os error").count(), 1, "{stderr}");
}

#[test]
fn logs_to_a_pipe_have_no_colour_and_json_logs_are_json() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["text", "json"] {
        // The log opens (and logs so), then the address cannot be bound: exit 1.
        let out = Command::new(common::bin())
            .env("LOGPLAYER_INSECURE", "true")
            .args([
                "--log-format",
                format,
                "logstore",
                "--listen",
                "256.0.0.1:0",
            ])
            .arg("--data")
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            !stderr.contains('\u{1b}'),
            "ANSI codes in a pipe: {stderr:?}"
        );
        let (logs, errors): (Vec<&str>, Vec<&str>) =
            stderr.lines().partition(|l| !l.starts_with("error: "));
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(logs.iter().any(|l| l.contains("WAL opened")), "{stderr}");
        if format == "json" {
            for line in logs {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            }
        }
    }
}

/// `LOGPLAYER_INSECURE` takes the usual spellings of a boolean (`1`, `yes`, `on`, `true` and
/// their opposites); anything else is refused naming the flag.
#[test]
fn the_insecure_variable_takes_the_usual_booleans() {
    let run = |value: &str| {
        let out = Command::new(common::bin())
            .env("LOGPLAYER_INSECURE", value)
            .args(["player", "--shard-map", "/nonexistent/map.yaml"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for yes in ["1", "yes", "on", "true"] {
        let stderr = run(yes);
        assert!(stderr.contains("/nonexistent/map.yaml"), "{yes}: {stderr}");
    }
    for no in ["0", "no", "off", "false"] {
        let stderr = run(no);
        assert!(stderr.contains("no TLS configured"), "{no}: {stderr}");
    }
    let stderr = run("maybe");
    assert!(stderr.contains("'--insecure'"), "{stderr}");
}

/// `LOGPLAYER_RUNTIME` picks the async runtime; a value that is neither is refused before
/// anything runs, naming the variable and the choices.
#[test]
fn the_runtime_variable_takes_two_values() {
    let run = |value: &str| {
        let out = Command::new(common::bin())
            .env("LOGPLAYER_RUNTIME", value)
            .env("LOGPLAYER_INSECURE", "true")
            .args(["player", "--shard-map", "/nonexistent/map.yaml"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for ok in ["current-thread", "multi-thread"] {
        let (code, stderr) = run(ok);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("/nonexistent/map.yaml"), "{ok}: {stderr}");
    }
    let (code, stderr) = run("green-threads");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("LOGPLAYER_RUNTIME") && stderr.contains("current-thread"),
        "{stderr}"
    );
}
