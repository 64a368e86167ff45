//! Moving checkpoints as a user does it from the command line: a run that publishes to the
//! embedded hub and the file store and reads both back, `gradline serve` serving what the
//! run produced, and a hub publisher refused at start-up without a token.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const ROUND_TRIP: &str = include_str!("../fixtures/run/round-trip.yaml");

fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gradline-cli-transfer-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gradline(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gradline"))
        .args(args)
        .current_dir(dir)
        .env("GRADLINE_CACHE", dir.join("cache"))
        .env_remove("HF_TOKEN")
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .env_remove("HUGGINGFACE_API_KEY")
        .output()
        .unwrap()
}

/// A running `gradline serve` and the address it listens on; killed when dropped.
struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gradline"))
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    Server(child, address)
}

/// One HTTP/1.1 request; the status line, headers (lowercase names) and body.
fn http_get(address: &str, path: &str, extra: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next().unwrap().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, response[split + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

#[test]
fn a_run_publishes_to_the_embedded_hub_and_the_store_and_reads_both_back() {
    let dir = workdir("round-trip");
    std::fs::write(dir.join("p.yaml"), ROUND_TRIP).unwrap();
    let out = gradline(&dir, &["run", "p.yaml", "--log-format", "text"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        std::fs::read(dir.join(".gradline/store/ckpt/model.safetensors")).unwrap(),
        b"pretend weights"
    );
    let head =
        std::fs::read_to_string(dir.join(".gradline/hub/demo/ckpt/refs/heads/main")).unwrap();
    assert_eq!(head.len(), 40);

    // `serve` hands out the newest checkpoint the run produced, with the hub revision.
    let server = serve(&dir, &["p.yaml"]);
    let (status, headers, body) = http_get(&server.1, "/get-checkpoint", "");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, b"pretend weights");
    assert_eq!(
        header(&headers, "x-gradline-digest"),
        blake3::hash(b"pretend weights").to_hex().as_str()
    );
    let (status, _, body) = http_get(&server.1, "/get-checkpoint", "Range: bytes=8-\r\n");
    assert!(status.contains("206"), "{status}");
    assert_eq!(body, b"weights");
    let (status, _, body) = http_get(&server.1, "/health", "");
    assert!(status.contains("200"), "{status}");
    assert!(String::from_utf8_lossy(&body).contains("\"status\":\"ok\""));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_answers_404_until_a_checkpoint_exists_and_serves_a_given_file() {
    let dir = workdir("serve");
    std::fs::write(dir.join("p.yaml"), ROUND_TRIP).unwrap();
    let server = serve(&dir, &["p.yaml"]);
    let (status, _, _) = http_get(&server.1, "/get-checkpoint", "");
    assert!(status.contains("404"), "{status}");
    drop(server);
    std::fs::write(dir.join("ckpt.bin"), b"0123456789").unwrap();
    let server = serve(&dir, &["--file", "ckpt.bin", "--revision", "rev-7"]);
    let (status, headers, body) = http_get(&server.1, "/get-checkpoint", "Range: bytes=-3\r\n");
    assert!(status.contains("206"), "{status}");
    assert_eq!(body, b"789");
    assert_eq!(header(&headers, "x-gradline-revision"), "rev-7");
    assert_eq!(header(&headers, "content-range"), "bytes 7-9/10");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_hub_publisher_without_a_token_stops_before_running_and_says_what_is_missing() {
    let dir = workdir("no-token");
    let text = "version: 1
name: publisher
role: publisher
resources:
  hub: { endpoint: \"https://huggingface.co\" }
stages:
  weights: { uses: emit, with: { text: w } }
  up:
    uses: publish
    with: { target: hub, repo: \"${{ env.GRADLINE_TEST_REPO }}\", artifact: \"${{ stages.weights.outputs.blob }}\" }
";
    std::fs::write(dir.join("p.yaml"), text).unwrap();
    let out = gradline(&dir, &["run", "p.yaml", "--log-format", "text"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`publisher` cannot start"), "{stderr}");
    assert!(stderr.contains("stage `up`: publishing to the hub needs a token, and none is set: tried HF_TOKEN, HUGGING_FACE_HUB_TOKEN, HUGGINGFACE_API_KEY"), "{stderr}");
    assert!(stderr.contains("needs a repository"), "{stderr}");
    assert!(!dir.join(".gradline/runs").exists(), "nothing ran");
    let _ = std::fs::remove_dir_all(&dir);
}
