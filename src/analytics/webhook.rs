//! Delivery of alerts to `[analytics.alerts] webhook`: each alert is POSTed as JSON by a task of
//! its own, retried with a doubling pause (0.5 s, 1 s, 2 s, ...) on a failed connection or a
//! non-2xx answer. The queue is bounded; nothing here runs on the request path.

use super::anomaly::Alert;
use prometheus::IntCounter;
use std::time::Duration;
use tokio::sync::mpsc;

/// Alerts waiting for delivery; more are dropped (and logged).
pub const QUEUE: usize = 1_000;

pub struct Webhook {
    pub url: String,
    pub timeout: Duration,
    pub retries: u32,
    pub failures: IntCounter,
}

impl Webhook {
    /// Delivers alerts from `rx` until the sending side is gone.
    pub async fn run(self, mut rx: mpsc::Receiver<Alert>) {
        let client = match reqwest::Client::builder()
            .timeout(self.timeout)
            .user_agent(concat!("turnpike/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                log::error!("alert webhook disabled: cannot build an HTTP client: {e}");
                return;
            }
        };
        while let Some(alert) = rx.recv().await {
            self.deliver(&client, &alert).await;
        }
    }

    async fn deliver(&self, client: &reqwest::Client, alert: &Alert) {
        let body = serde_json::to_vec(alert).unwrap_or_default();
        let req = || {
            client
                .post(&self.url)
                .header("content-type", "application/json")
                .body(body.clone())
        };
        if let Err((attempts, why)) = post_with_retries(req, self.retries).await {
            self.failures.inc();
            log::warn!(
                "alert webhook: {} alert for API {} not delivered after {attempts} attempts: {why}",
                alert.kind,
                alert.api,
            );
        }
    }
}

/// Sends what `request` builds until a 2xx answer, retrying `retries` times with a doubling
/// pause (0.5 s, 1 s, ... at most 30 s) after a failed connection or another answer. `Err`
/// holds the attempts made and why the last failed, without the URL (webhook URLs often carry
/// their secret).
pub async fn post_with_retries(
    request: impl Fn() -> reqwest::RequestBuilder,
    retries: u32,
) -> Result<(), (u32, String)> {
    let mut pause = Duration::from_millis(500);
    let mut attempt = 0;
    loop {
        let why = match request().send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => format!("answered {}", resp.status()),
            Err(e) => format!("{}", e.without_url()),
        };
        attempt += 1;
        if attempt > retries {
            return Err((attempt, why));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}
