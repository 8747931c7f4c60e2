//! The binary as a black box: help, bad input, config errors, the generator and the demo.

use std::path::Path;
use std::process::Command;

#[path = "support/http.rs"]
mod http;
use http::http_get;

fn stockcast() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stockcast"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn help_describes_every_command() {
    let help = run_ok(stockcast().arg("--help"));
    for cmd in ["replay", "features", "generate", "demo", "check-config"] {
        assert!(help.contains(cmd), "{help}");
        let sub = run_ok(stockcast().args([cmd, "--help"]));
        assert!(sub.len() > 100, "{cmd}: {sub}");
    }
}

/// A dataset directory `data` under `tmp` holding `sales` as its sales.csv.
fn sales_dir(tmp: &std::path::Path, sales: &str) -> std::path::PathBuf {
    let data = tmp.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("sales.csv"), sales).unwrap();
    data
}

#[test]
fn bad_rows_are_dead_lettered_and_the_run_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sales_dir(
        tmp.path(),
        "ts,store_id,sku_id,qty,price\n\
         2024-01-01,S1,A,2,1.50\n\
         2024-01-02,S1,A,NaN,1.50\n\
         not-a-date,S1,A,1,\n\
         2024-01-03,S1,,1,\n\
         2024-01-04,S1,A,3,\n\
         2999-01-01,S1,A,1,\n\
         1960-01-01,S1,A,1,\n",
    );
    std::fs::write(
        data.join("stock.jsonl"),
        "{\"ts\":\"2024-01-01T06:00:00Z\",\"store_id\":\"S1\",\"sku_id\":\"A\",\"kind\":\"receipt\",\"qty\":10}\n\
         {\"ts\":\"2024-01-02T06:00:00Z\",\"store_id\":\"S1\",\"sku_id\":\"A\",\"kind\":\"teleport\",\"qty\":1}\n\
         {broken\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    for (workers, out) in [("1", &out), ("3", &tmp.path().join("out3"))] {
        run_ok(
            stockcast()
                .args(["replay", "--workers", workers, "--data"])
                .arg(&data)
                .arg("--out")
                .arg(out),
        );
    }
    for file in ["dead_letters.jsonl", "forecasts.jsonl"] {
        let read = |dir: &str| std::fs::read(tmp.path().join(dir).join(file)).unwrap();
        assert_eq!(read("out"), read("out3"), "{file} differs with 3 workers");
    }
    let dead = std::fs::read_to_string(out.join("dead_letters.jsonl")).unwrap();
    let dead: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut reasons: Vec<(String, u64, String)> = dead
        .iter()
        .map(|d| {
            (
                d["file"].as_str().unwrap().to_string(),
                d["line"].as_u64().unwrap(),
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("sales.csv".into(), 3, "non_finite".into()),
            ("sales.csv".into(), 4, "bad_time".into()),
            ("sales.csv".into(), 5, "missing_field".into()),
            ("sales.csv".into(), 7, "future_time".into()),
            ("sales.csv".into(), 8, "before_epoch_zero".into()),
            ("stock.jsonl".into(), 2, "unknown_kind".into()),
            ("stock.jsonl".into(), 3, "malformed".into()),
        ]
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    // Refused by the dataflow, after decoding: the event as the input topics carry it.
    let future = dead.iter().find(|d| d["reason"] == "future_time").unwrap();
    let record: serde_json::Value =
        serde_json::from_str(future["record"].as_str().unwrap()).unwrap();
    assert_eq!(record["ts"], "2999-01-01T00:00:00Z");
    assert_eq!(summary["events_read"]["sales"], 4);
    assert_eq!(summary["dead_letters"]["non_finite"], 1);
    assert_eq!(summary["dead_letters"]["future_time"], 1);
    assert_eq!(summary["dead_letters"]["before_epoch_zero"], 1);
    let last = std::fs::read_to_string(out.join("forecasts.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    // 10 received, 2 + 3 sold.
    assert_eq!(last["on_hand"], 5.0);
}

/// A replay ends at the epoch of its last event: when that is a day's last epoch, moving on to
/// the next would slide every window into a day the data never reached and forecast every
/// series for it.
#[test]
fn replay_ends_at_the_last_events_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sales_dir(
        tmp.path(),
        "ts,store_id,sku_id,qty,price\n\
         2024-01-01T10:00:00Z,S1,A,2,1.50\n\
         2024-01-01T11:00:00Z,S2,B,1,3.00\n\
         2024-01-02T23:59:00Z,S1,A,1,1.50\n",
    );
    let out = tmp.path().join("out");
    run_ok(
        stockcast()
            .args(["replay", "--workers", "2", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&out),
    );
    let text = std::fs::read_to_string(out.join("forecasts.jsonl")).unwrap();
    let ends: std::collections::BTreeSet<String> = text
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            r["epoch_end"].as_str().unwrap().to_string()
        })
        .collect();
    // The 15-minute epoch of 23:59 ends at midnight; the days before were rolled over.
    assert_eq!(
        ends.last().map(String::as_str),
        Some("2024-01-03T00:00:00Z")
    );
    assert!(ends.contains("2024-01-02T00:15:00Z"), "{ends:?}");
}

#[test]
fn config_errors_name_the_field_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bad.toml");
    std::fs::write(&file, "[time]\nepoch_secs = 1000\n").unwrap();
    let out = stockcast().arg("check-config").arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("time.epoch_secs"),
        "{err}"
    );
    std::fs::write(&file, "[features]\nwindow = [1]\n").unwrap();
    let out = stockcast().arg("check-config").arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("window") && err.contains("bad.toml"),
        "{err}"
    );
}

#[test]
fn client_secrets_are_masked_and_security_settings_reach_librdkafka() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("secure.toml");
    std::fs::write(
        &file,
        "[kafka]\nbrokers = \"127.0.0.1:1\"\n[kafka.client]\n\
         \"security.protocol\" = \"ssl\"\n\"sasl.username\" = \"app\"\n\
         \"sasl.password\" = \"s3cret-1\"\n\"ssl.key.password\" = \"s3cret-2\"\n",
    )
    .unwrap();
    let printed = run_ok(stockcast().arg("check-config").arg(&file));
    assert!(printed.contains("\"sasl.password\" = \"***\""), "{printed}");
    assert!(!printed.contains("s3cret"), "{printed}");
    // librdkafka itself rejects the TLS setting (this build has no OpenSSL), naming it: the
    // property reached the client.
    let out = stockcast()
        .args(["run", "--listen", "", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("security.protocol") || err.contains("ssl.key.password"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn every_file_in_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let printed = run_ok(stockcast().arg("check-config").arg(&path));
            assert!(printed.contains("[time]"), "{printed}");
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn the_generator_is_seeded() {
    let tmp = tempfile::tempdir().unwrap();
    let gen = |dir: &Path, seed: &str| {
        run_ok(
            stockcast()
                .args([
                    "generate", "--stores", "2", "--skus", "3", "--days", "60", "--seed", seed,
                    "--out",
                ])
                .arg(dir),
        );
        std::fs::read(dir.join("sales.csv")).unwrap()
    };
    let a = gen(&tmp.path().join("a"), "7");
    let b = gen(&tmp.path().join("b"), "7");
    let c = gen(&tmp.path().join("c"), "8");
    assert_eq!(a, b);
    assert_ne!(a, c);
    let stock = std::fs::read_to_string(tmp.path().join("a/stock.csv")).unwrap();
    for kind in ["order", "receipt", "adjustment"] {
        assert!(
            stock.contains(kind),
            "no {kind} in the generated stock file"
        );
    }
}

#[test]
fn demo_runs_on_the_embedded_default() {
    let text = run_ok(stockcast().args(["demo", "--days", "120"]));
    assert!(text.contains("top series by forecast demand"), "{text}");
    // The two broken records the demo streams are dead-lettered, with their reasons.
    assert!(
        text.contains(r#"dead letters {"malformed": 1, "non_finite": 1}"#),
        "{text}"
    );
    assert!(text.contains("late events 0"), "{text}");
    // It trained a model on the generated history, compared it with the baseline on the held-out
    // days, and that model scored every series' latest forecast.
    assert!(text.contains("model stockcast-demo "), "{text}");
    assert!(text.contains("held-out days it scored WAPE"), "{text}");
    assert!(text.contains(r#"scored by: {"stockcast-demo "#), "{text}");
    assert!(!text.contains("baseline-"), "{text}");
}

/// A stand-in Sentry ingest endpoint on loopback: answers every request with 200 and keeps the
/// request bodies (envelopes).
fn sentry_receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = std::sync::Arc::clone(&bodies);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        }
    });
    (port, bodies)
}

#[test]
fn a_failing_worker_reports_its_error_to_sentry() {
    let (port, bodies) = sentry_receiver();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("stockcast.toml");
    std::fs::write(
        &config,
        format!("[http]\nlisten = \"\"\n[sentry]\ndsn = \"http://testkey@127.0.0.1:{port}/42\"\nenvironment = \"ci\"\n"),
    )
    .unwrap();
    let hosts = tmp.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1:1\n").unwrap();
    // Process 3 of a one-process cluster: the worker fails at start.
    let fail = || {
        let out = stockcast()
            .args(["run", "--process", "3", "--config"])
            .arg(&config)
            .arg("--hosts")
            .arg(&hosts)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fail();
    assert!(err.contains("process 3 is not in host file"), "{err}");
    // The guard flushed before exit: the event is already there.
    let received = bodies.lock().unwrap().clone();
    let event = received
        .iter()
        .find(|b| b.contains("process 3 is not in host file"))
        .unwrap_or_else(|| panic!("no event with the error among {received:?}"));
    assert!(event.contains("the worker failed"), "{event}");
    assert!(event.contains("\"environment\":\"ci\""), "{event}");

    // Without a DSN nothing is sent.
    std::fs::write(&config, "[http]\nlisten = \"\"\n").unwrap();
    fail();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(bodies.lock().unwrap().len(), received.len());
}

#[test]
fn the_serving_demo_answers_the_read_api_until_sigterm() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    let mut child = stockcast()
        .args(["demo", "--days", "60", "--serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let serving = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.starts_with("serving:"))
        .expect("the demo says where it serves");
    let addr = serving
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    // The recommendations fill in as the stream's epochs close.
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = loop {
        let (status, body) = http_get(&addr, "/v1/recommendations?limit=3");
        if status == 200 && body.contains("order_qty") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no recommendations: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(!rows.as_array().unwrap().is_empty(), "{body}");
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert_eq!(http_get(&addr, "/v1/forecasts/S999/nothing").0, 404);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(child.wait().unwrap().success());
    assert!(
        rest.iter()
            .any(|l| l.contains("top series by forecast demand")),
        "{rest:?}"
    );
}
