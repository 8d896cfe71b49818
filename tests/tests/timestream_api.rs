//! Timestream's own API, driven by stock clients against the real stack: the Python suite in
//! `tests/python/` (unmodified boto3, Debian's AWS CLI, awswrangler; `scripts/ensure-pyenv.sh`
//! installs them) runs against a stack of two ingest workers, with the stack's CA, its admin token
//! as AWS keys, a read-only signing token, and the workers' process ids (one test pauses them to
//! make real backpressure).

use std::path::PathBuf;
use std::time::Duration;

use lodestone_kit::auth::Scope;
use lodestone_tests::{Stack, StackOptions};

/// The venv `scripts/ensure-pyenv.sh` makes (`make test` sets `LODESTONE_PYTHON` to its python).
fn python() -> PathBuf {
    match std::env::var("LODESTONE_PYTHON") {
        Ok(path) => PathBuf::from(path),
        Err(_) => PathBuf::from(std::env::var("LODESTONE_CACHE").unwrap_or_else(|_| "/var/cache/lodestone".into())).join("py-venv/bin/python"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_the_aws_cli_and_awswrangler_work_against_lodestone_unchanged() {
    // A short write timeout, so that the test that pauses the workers sees its 429 soon.
    let options = StackOptions {
        ingest_workers: 2,
        edge_agent: false,
        query_env: vec![("LODESTONE_QUERY__TIMESTREAM__WRITE_TIMEOUT_MS".into(), "3000".into())],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(options).await;
    stack.wait_ingest_ready(Duration::from_secs(60)).await;
    let (key, secret) = stack.credentials.admin_aws_keys();
    let (reader_key, reader_secret) = stack.credentials.issue_signing("reader", &[Scope::Read("*".into())]).expect("a reader token");
    let pids: Vec<String> = ["ingest-0", "ingest-1"].iter().map(|name| stack.process(name).pid().to_string()).collect();
    let endpoint = stack.url(stack.ports.query_http);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf();
    let environment = [
        ("LODESTONE_TS_ENDPOINT", endpoint),
        ("AWS_CA_BUNDLE", stack.credentials.ca_path.display().to_string()),
        ("REQUESTS_CA_BUNDLE", stack.credentials.ca_path.display().to_string()),
        ("AWS_ACCESS_KEY_ID", key),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("LODESTONE_TS_READER_KEY_ID", reader_key),
        ("LODESTONE_TS_READER_SECRET", reader_secret),
        ("LODESTONE_BEARER", stack.credentials.admin_bearer.clone()),
        ("LODESTONE_INGEST_PIDS", pids.join(",")),
        // Nothing of the machine's own AWS set-up may leak in.
        ("AWS_CONFIG_FILE", "/dev/null".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("PYTHONDONTWRITEBYTECODE", "1".into()),
    ];
    // pytest prints to the test's own output as it goes; exit code 0 means every test ran and
    // passed (5 would mean none was collected).
    let status = tokio::process::Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/python"])
        .current_dir(&root)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .envs(environment)
        .status()
        .await
        .expect("the test venv's python runs (scripts/ensure-pyenv.sh makes it)");
    assert!(status.success(), "the Timestream suite failed ({status}); its output is above");
}
