//! The command line as a user meets it: a user error is one line on stderr (no backtrace,
//! whatever `RUST_BACKTRACE` says) with exit code 1, and logs written to a pipe carry no
//! ANSI colour codes; `LOGPLAYER_INSECURE` reads as a boolean does elsewhere, and
//! `LOGPLAYER_RUNTIME` takes one of two runtimes; `--preallocate` reaches the WAL; an address
//! or id that cannot work stops a process at start; a shard takes only its own flags.

mod common;

use std::process::Command;

/// Runs the binary plaintext with `args`: its exit code and stderr.
fn insecure<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Option<i32>, String) {
    let out = Command::new(common::bin())
        .env("LOGPLAYER_INSECURE", "true")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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

/// Addresses nobody can dial and ids a map would refuse stop a process at start, naming
/// the value (they used to start and retry forever, or serve under an id no map can name).
#[tokio::test]
async fn an_address_or_id_that_cannot_work_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d").display().to_string();
    for (args, says) in [
        (
            vec![
                "player",
                "--logstore",
                "127.0.0.1:99999",
                "--shard",
                "s0=127.0.0.1:7100",
            ],
            "LogStore address \"127.0.0.1:99999\"",
        ),
        (
            vec![
                "player",
                "--logstore",
                "127.0.0.1:7000",
                "--shard",
                "s0=localhost",
            ],
            "shard s0: address",
        ),
        (
            vec![
                "shard",
                "--id",
                "a/b",
                "--listen",
                "127.0.0.1:0",
                "--data",
                &data,
            ],
            "shard id must be non-empty",
        ),
        (
            vec![
                "logstore",
                "--id",
                "1",
                "--listen",
                "127.0.0.1:17201",
                "--peers",
                "1=127.0.0.1:17209,2=127.0.0.1:17201,3=127.0.0.1:17203",
                "--data",
                &data,
            ],
            "is replica 2's address in --peers",
        ),
        (
            vec![
                "logstore",
                "--id",
                "4",
                "--listen",
                "127.0.0.1:0",
                "--peers",
                "1=127.0.0.1:17211,2=127.0.0.1:17212,3=127.0.0.1:17213",
                "--data",
                &data,
            ],
            "--id 4 is not in --peers (1,2,3): list it with its address, or pass --join",
        ),
    ] {
        // A server that took the flags would run on: the test must not wait for it.
        let (status, stderr) = common::ends_within(&args, std::time::Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{args:?} started"));
        assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // Two replicas at one socket, however spelled: refused as the flag is parsed.
    let (code, stderr) = insecure(&[
        "logstore",
        "--id",
        "1",
        "--listen",
        "127.0.0.1:17231",
        "--peers",
        "1=127.0.0.1:17231,2=LOCALHOST:017231,3=127.0.0.1:17233",
        "--data",
        &data,
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "replicas 1 (127.0.0.1:17231) and 2 (LOCALHOST:017231) are given one address"
        ),
        "{stderr}"
    );
}

/// The LogStore's stream limits are not a shard's flags: a shard serves no `Read` or
/// `AppendStream`, so `shard --max-read-streams` would be accepted and do nothing.
#[test]
fn a_shard_refuses_the_log_stores_stream_limits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d").display().to_string();
    for flag in [
        "--max-read-streams=2",
        "--read-stall-timeout=1s",
        "--idle-stream-timeout=1s",
    ] {
        let out = Command::new(common::bin())
            .env("LOGPLAYER_INSECURE", "true")
            // An id no map can name: were the flag taken, the shard would stop at start
            // (exit 1) rather than serve, and the test fail rather than hang.
            .args([
                "shard",
                "--id",
                "a/b",
                "--listen",
                "127.0.0.1:0",
                "--data",
                &data,
                flag,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains("unexpected argument"), "{flag}: {stderr}");
    }
    let help = Command::new(common::bin())
        .args(["shard", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--max-connections"), "{help}");
    assert!(!help.contains("--max-read-streams"), "{help}");
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
        // It warns that it runs plaintext, then the address cannot be bound: exit 1.
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
        assert!(logs.iter().any(|l| l.contains("plaintext")), "{stderr}");
        if format == "json" {
            for line in logs {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            }
        }
    }
}

/// A server that cannot bind its `--listen` leaves no new log or store behind (a log id
/// created for nothing, in a directory the next start would then take as this log).
#[test]
fn a_server_that_cannot_listen_creates_no_data() {
    let dir = tempfile::tempdir().unwrap();
    for (what, extra) in [("logstore", vec![]), ("shard", vec!["--id", "s0"])] {
        let data = dir.path().join(what);
        let out = Command::new(common::bin())
            .env("LOGPLAYER_INSECURE", "true")
            .args([what, "--listen", "256.0.0.1:0"])
            .args(extra)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("256.0.0.1:0"), "{stderr}");
        assert!(!data.exists(), "{what} created {}", data.display());
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

/// `--preallocate` (`LOGPLAYER_PREALLOCATE`) reaches the LogStore's WAL: on by default the
/// fresh segment is zero-filled 4 MiB ahead, with `false` it holds only its header; a value
/// that is not a boolean is refused naming the flag.
#[test]
fn the_preallocate_flag_reaches_the_wal() {
    use std::io::{BufRead, BufReader};
    let segment_len = |value: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(common::bin());
        cmd.env("LOGPLAYER_INSECURE", "true")
            .args(["logstore", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if let Some(v) = value {
            cmd.env("LOGPLAYER_PREALLOCATE", v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening on"), "{line}");
        let segment = dir.path().join("00000000000000000001.wal");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut len = std::fs::metadata(&segment).unwrap().len();
        while value.is_none() && len < 4 << 20 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            len = std::fs::metadata(&segment).unwrap().len();
        }
        // Long enough for a filler that should not run to have run.
        if value.is_some() {
            std::thread::sleep(std::time::Duration::from_millis(300));
            len = std::fs::metadata(&segment).unwrap().len();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        len
    };
    assert_eq!(segment_len(None), 8 + (4 << 20));
    assert_eq!(segment_len(Some("false")), 8);

    let out = Command::new(common::bin())
        .env("LOGPLAYER_PREALLOCATE", "maybe")
        .args(["logstore", "--data", "/nonexistent"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--preallocate"), "{stderr}");
}

/// Counts that make no sense are refused by name before anything starts: `bench --shards 0`
/// used to panic, `failover-bench --replicas 1` to wait a minute for a takeover no standby
/// could make, `demo --shards 0` to blame the lease, and `--keys 0` to be taken as 1.
#[test]
fn counts_that_cannot_work_are_refused_by_name() {
    for (args, flag, least) in [
        (&["bench", "--shards", "2,0"][..], "--shards", 1),
        (&["bench", "--keys", "0"], "--keys", 1),
        (&["load", "--key-space", "0"], "--key-space", 1),
        (&["load", "--concurrency", "0"], "--concurrency", 1),
        (&["failover-bench", "--replicas", "1"], "--replicas", 2),
        (&["failover-bench", "--takedowns", "0"], "--takedowns", 1),
        (&["failover-bench", "--shards", "0"], "--shards", 1),
        (&["demo", "--shards", "0"], "--shards", 1),
        (&["demo", "--keys", "0"], "--keys", 1),
        (&["demo", "--rounds", "0"], "--rounds", 1),
        (
            &[
                "player",
                "--logstore",
                "a:1",
                "--shard",
                "s0=b:1",
                "--epoch",
                "0",
            ],
            "--epoch",
            1,
        ),
        (
            &[
                "logstore",
                "--id",
                "1",
                "--peers",
                "1=a:1",
                "--snapshot-every",
                "0",
            ],
            "--snapshot-every",
            1,
        ),
    ] {
        let out = Command::new(common::bin())
            .env("LOGPLAYER_INSECURE", "true")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("for '{flag} <"))
                && stderr.contains(&format!("must be at least {least}")),
            "{args:?}: {stderr}"
        );
    }
    // An empty namespace would have meant the whole cluster.
    let out = Command::new(common::bin())
        .args(["operator", "--watch-namespace", ""])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--watch-namespace: an empty namespace name"),
        "{stderr}"
    );
    // A domain the pods' addresses could not carry (the chart's schema refuses it too).
    let out = Command::new(common::bin())
        .args(["operator", "--cluster-domain", "cluster.local:443"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"cluster.local:443\" is not a DNS domain"),
        "{stderr}"
    );
    let (code, stderr) = insecure(&["status", "--logstore", "a:1", "--timeout", "0s"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("'--timeout <") && stderr.contains("must be above 0"),
        "{stderr}"
    );
    // Log replicas: odd, 1 to 7, as the CRD's `logStore.managed.replicas`.
    for args in [
        &["bench", "--logstore-replicas", "1,0"][..],
        &["bench", "--logstore-replicas", "2"],
        &["demo", "--logstore-replicas", "4"],
        &["demo", "--logstore-replicas", "9"],
    ] {
        let (code, stderr) = insecure(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("for '--logstore-replicas <") && stderr.contains("must be odd, 1 to 7"),
            "{args:?}: {stderr}"
        );
    }
    // Transactions above the entry limit of the servers they start: refused before any
    // starts (every append failed; the demo's check then passed on an empty log).
    for args in [
        &["demo", "--txn-bytes", "8000000", "--seconds", "1"][..],
        &["bench", "--sizes", "1024,8000000", "--seconds", "1"],
    ] {
        let (code, stderr) = insecure(args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(" 8000000 with --keys 10 makes entries of up to")
                && stderr.contains("--max-entry-bytes 4194304"),
            "{args:?}: {stderr}"
        );
    }
}

/// The player's delivery limits are the CRD's (`delivery.*`, `lease.leaseDuration`): one
/// bound for each, so the API server never accepts what the pods then refuse, and a value
/// past it is refused by name at start.
#[test]
fn the_players_limits_are_the_crds() {
    let base = [
        "player",
        "--logstore",
        "127.0.0.1:7000",
        "--shard",
        "s0=127.0.0.1:7100",
    ];
    for (flag, says, code) in [
        ("--window=1025", "--window must be 1 to 1024, not 1025", 1),
        (
            "--window-bytes=1073741825",
            "--window-bytes must be 1 to 1 GiB, not 1073741825",
            1,
        ),
        (
            "--batch-bytes=8388609",
            "--batch-bytes must be 1 to 8 MiB, not 8388609",
            1,
        ),
        (
            "--queue-bytes=1073741825",
            "--queue-bytes (and the catch-up queue) must be 64 KiB to 1 GiB, not 1073741825",
            1,
        ),
        ("--lease-duration=61m", "must be above 0 and at most 1h", 2),
        (
            "--checkpoint-interval=0s",
            "--checkpoint-interval must be above 0",
            1,
        ),
        (
            "--checkpoint-interval=61m",
            "--checkpoint-interval must be above 0 and at most 1h, not 1h 1m",
            1,
        ),
        (
            "--watermark-every=1000001",
            "--watermark-every must be 1 to 1000000, not 1000001",
            1,
        ),
        // Without a lease too: a timing that could never work is refused, not ignored.
        (
            "--renew-deadline=10s",
            "invalid lease timing: renew_deadline must be shorter than lease_duration",
            1,
        ),
    ] {
        let out = Command::new(common::bin())
            .env("LOGPLAYER_INSECURE", "true")
            .args(base)
            .arg(flag)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{flag}: {stderr}");
        assert!(stderr.contains(says), "{flag}: {stderr}");
    }
}

/// The operator issues each LogPlayer's certificates and dials with them: the global TLS
/// flags would do nothing there, so they are refused by name instead of ignored.
#[test]
fn the_operator_refuses_tls_flags_it_would_ignore() {
    for args in [
        &["operator", "--insecure"][..],
        &[
            "--tls-cert",
            "/x.crt",
            "--tls-key",
            "/x.key",
            "--tls-ca",
            "/ca.crt",
            "operator",
        ],
        &["crd", "--insecure"],
    ] {
        let out = Command::new(common::bin())
            .env_remove("LOGPLAYER_INSECURE")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("do nothing for this command"),
            "{args:?}: {stderr}"
        );
    }
}

/// `--heartbeat` out of 10ms..10s is refused at start (it used to be raised to 10 ms
/// silently below, and taken above: one replica at 1h kept refusing votes for an hour after
/// its leader died).
#[test]
fn a_replica_heartbeat_out_of_range_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for hb in ["0s", "5ms", "1h"] {
        let data = dir.path().join(hb).display().to_string();
        let (code, stderr) = insecure(&[
            "logstore",
            "--id",
            "1",
            "--peers",
            "1=127.0.0.1:1",
            "--heartbeat",
            hb,
            "--listen",
            "127.0.0.1:0",
            "--data",
            &data,
        ]);
        assert!(
            code != Some(0) && stderr.contains(&format!("--heartbeat {hb} is outside 10ms to 10s")),
            "{hb}: {stderr}"
        );
    }
}

/// Settings read before the flags are refused by name: a worker count tokio cannot use
/// (it panicked) and a replica address no one can dial (port 0 was accepted in `--peers`).
#[test]
fn settings_that_cannot_work_are_refused_naming_them() {
    for n in ["0", "abc", "200000"] {
        let out = Command::new(common::bin())
            .env("TOKIO_WORKER_THREADS", n)
            .args(["logstore", "--help"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{n}: {stderr}");
        assert!(
            stderr.contains("TOKIO_WORKER_THREADS is") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
    let (code, stderr) = insecure(&[
        "logstore",
        "--id",
        "1",
        "--peers",
        "1=127.0.0.1:0",
        "--data",
        "/nonexistent",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("port 0 cannot be dialed"), "{stderr}");
}

/// A server's limits past what they can mean are refused by name before it binds or
/// creates anything: `--max-connections` above a semaphore's permits panicked after
/// "listening" (and left a new data directory behind), a timeout of years turned its
/// protection off without a word, and `members add --catch-up` of years panicked adding
/// durations.
#[test]
fn limits_past_what_they_can_mean_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("log").display().to_string();
    let huge = u64::MAX.to_string();
    for (flag, value, says) in [
        (
            "--max-connections",
            huge.as_str(),
            "--max-connections must be between 1 and 1048576",
        ),
        (
            "--max-read-streams",
            "65537",
            "--max-read-streams must be between 1 and 65536",
        ),
        (
            "--max-streams-per-connection",
            "65537",
            "--max-streams-per-connection must be between 1 and 65536",
        ),
        (
            "--max-writers",
            "1000000",
            "--max-writers must be between 1 and",
        ),
        (
            "--read-stall-timeout",
            "25h",
            "--read-stall-timeout must be at least 1s and at most 1day",
        ),
        (
            "--idle-stream-timeout",
            "100ms",
            "--idle-stream-timeout must be at least 1s",
        ),
        (
            "--idle-connection-timeout",
            "1000years",
            "--idle-connection-timeout must be at least 1s and at most 1day",
        ),
    ] {
        let (code, stderr) = insecure(&[
            "logstore",
            "--listen",
            "127.0.0.1:0",
            "--data",
            &data,
            flag,
            value,
        ]);
        assert_eq!(code, Some(1), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(says) && !stderr.contains("panicked"),
            "{flag} {value}: {stderr}"
        );
        assert!(
            !dir.path().join("log").exists(),
            "{flag} {value} created its data directory"
        );
    }
    let (code, stderr) = insecure(&[
        "shard",
        "--id",
        "s0",
        "--listen",
        "127.0.0.1:0",
        "--data",
        &data,
        "--max-connections",
        &huge,
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--max-connections must be between 1 and 1048576"),
        "{stderr}"
    );
    for catch_up in ["0s", "25h", "18446744073709551615s"] {
        let (code, stderr) = insecure(&[
            "logstore",
            "members",
            "--logstore",
            "127.0.0.1:1",
            "add",
            "2=127.0.0.1:2",
            "--catch-up",
            catch_up,
        ]);
        assert_eq!(code, Some(2), "{catch_up}: {stderr}");
        assert!(
            stderr.contains("--catch-up") && !stderr.contains("panicked"),
            "{catch_up}: {stderr}"
        );
    }
}

/// A player's cursor file that does not parse, or a lease file in a directory that does not
/// exist, is refused at start naming it: the player used to deliver while warning at every
/// checkpoint that it could not save, or warn at every lease attempt and never lead.
#[test]
fn a_player_refuses_a_cursor_file_it_cannot_read_and_a_lease_file_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("cursors.json");
    std::fs::write(&garbage, "not json").unwrap();
    let base = [
        "player",
        "--logstore",
        "127.0.0.1:1",
        "--shard",
        "s0=127.0.0.1:2",
    ];
    let cases: [(Vec<String>, &str); 2] = [
        (
            vec!["--cursor-file".into(), garbage.display().to_string()],
            "reading the cursor file",
        ),
        (
            vec![
                "--lease-file".into(),
                dir.path().join("nowhere/lease").display().to_string(),
            ],
            "does not exist",
        ),
    ];
    for (extra, says) in cases {
        let args: Vec<String> = base
            .iter()
            .map(|a| a.to_string())
            .chain(extra.clone())
            .collect();
        let (code, stderr) = insecure(&args);
        assert_eq!(code, Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }
}

/// A data directory that is a file is named as such (it was "File exists (os error 17)").
#[test]
fn a_data_directory_that_is_a_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let file = file.display().to_string();
    let single = ["logstore", "--data", &file, "--listen", "127.0.0.1:0"];
    let replica = [&single[..], &["--id", "1", "--peers", "1=127.0.0.1:1"]].concat();
    for args in [&single[..], &replica] {
        let (code, stderr) = insecure(args);
        assert!(
            code != Some(0) && stderr.contains("is a file, not a directory"),
            "{args:?}: {stderr}"
        );
    }
}

/// A value refused that came from an environment variable names the variable too (clap
/// names only the flag, which is nowhere in the command typed); one typed on the command
/// line does not.
#[test]
fn a_bad_value_from_the_environment_names_its_variable() {
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let out = Command::new(common::bin())
            .env("LOGPLAYER_INSECURE", "true")
            .envs(env.iter().copied())
            .args(["logstore", "--data", "/nonexistent"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = run(&[("LOGPLAYER_MAX_ENTRY_BYTES", "abc")], &[]);
    assert!(
        said.contains("--max-entry-bytes")
            && said.contains("environment variable LOGPLAYER_MAX_ENTRY_BYTES"),
        "{said}"
    );
    let said = run(&[("LOGPLAYER_IDLE_CONNECTION_TIMEOUT", "5")], &[]);
    assert!(said.contains("LOGPLAYER_IDLE_CONNECTION_TIMEOUT"), "{said}");
    let said = run(&[], &["--max-entry-bytes", "abc"]);
    assert!(!said.contains("environment variable"), "{said}");
    // Two flags in conflict, one of them from the environment: that one is named.
    let out = Command::new(common::bin())
        .env("LOGPLAYER_INSECURE", "true")
        .env("LOGPLAYER_SHARDS", "s0=127.0.0.1:1")
        .args([
            "player",
            "--logstore",
            "127.0.0.1:2",
            "--shard-map",
            "/x.yaml",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("the value of --shard came from the environment variable LOGPLAYER_SHARDS"),
        "{said}"
    );
}

/// The bounds `--help` states are the ones the servers enforce (the same constants).
#[test]
fn help_states_the_bounds_the_servers_enforce() {
    let help = |cmd: &str| {
        let out = Command::new(common::bin())
            .args([cmd, "--help"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let logstore = help("logstore");
    for want in [
        format!("(1 to {})", logplayer::serving::MAX_CONNECTIONS),
        format!("(1 to {})", logplayer::serving::MAX_READ_STREAMS),
        format!("(1 to {})", logplayer::serving::MAX_STREAMS_PER_CONNECTION),
    ] {
        assert!(logstore.contains(&want), "logstore --help lacks {want:?}");
    }
    let max_delay = humantime::format_duration(logplayer::shard::gather::MAX_COMMIT_DELAY);
    assert!(
        help("shard").contains(&format!("at most {max_delay}")),
        "shard --help lacks the commit delay's bound {max_delay}"
    );
}
