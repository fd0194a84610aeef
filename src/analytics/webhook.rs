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
        let mut pause = Duration::from_millis(500);
        for attempt in 0..=self.retries {
            let sent = client
                .post(&self.url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let why = match sent {
                Ok(resp) if resp.status().is_success() => return,
                Ok(resp) => format!("answered {}", resp.status()),
                // Without the URL: webhook URLs often carry their secret.
                Err(e) => format!("{}", e.without_url()),
            };
            if attempt == self.retries {
                self.failures.inc();
                log::warn!(
                    "alert webhook: {} alert for API {} not delivered after {} attempts: {why}",
                    alert.kind,
                    alert.api,
                    attempt + 1
                );
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    }
}
