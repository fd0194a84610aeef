//! `turnpike explain`: one request through the pipeline, printed stage by stage (or as JSON).

use super::{Bench, Simulate, Simulated};
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

/// What `turnpike explain` was asked.
pub struct Ask<'a> {
    pub config: &'a Path,
    /// `METHOD URL`.
    pub request: &'a str,
    /// `Name: value` lines.
    pub headers: &'a [String],
    pub client_ip: Option<IpAddr>,
    pub body_size: Option<u64>,
    pub body: Option<&'a str>,
    pub usage: u64,
    pub json: bool,
}

/// Parses `METHOD URL` and `Name: value` headers.
pub fn parse_request(
    line: &str,
    headers: &[String],
    client_ip: Option<IpAddr>,
    body_size: Option<u64>,
    body: Option<&str>,
) -> Result<Simulate, String> {
    let mut words = line.split_whitespace();
    let (Some(method), Some(url), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!(
            "{line:?}: give the method and the URL, e.g. 'GET https://api.example.com/orders/42'"
        ));
    };
    let mut list = Vec::new();
    for h in headers {
        let Some((n, v)) = h.split_once(':') else {
            return Err(format!("{h:?}: a header is 'Name: value'"));
        };
        list.push((n.trim().to_string(), v.trim().to_string()));
    }
    Ok(Simulate {
        method: method.to_string(),
        url: url.to_string(),
        headers: list,
        client_ip,
        body_size,
        body: body.map(String::from),
    })
}

pub fn run(ask: &Ask<'_>) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("{msg}");
        ExitCode::from(1)
    };
    let req = match parse_request(
        ask.request,
        ask.headers,
        ask.client_ip,
        ask.body_size,
        ask.body,
    ) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut bench = match Bench::open(ask.config) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let mut req = req;
    match super::cases::with_keys(&mut bench, req.headers.iter().map(|(n, v)| (n, v))) {
        Ok(h) => req.headers = h,
        Err(e) => return fail(e),
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start a runtime: {e}")),
    };
    let result = runtime.block_on(async {
        bench.warm(&req, ask.usage).await?;
        bench.run(&req).await
    });
    match result {
        Ok(out) if ask.json => {
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(out) => {
            print!("{}", render(&req, &out));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// The text report.
pub fn render(req: &Simulate, out: &Simulated) -> String {
    let mut s = String::new();
    let mut line = |text: String| {
        s.push_str(&text);
        s.push('\n');
    };
    line(format!("{} {}", req.method.to_ascii_uppercase(), req.url));
    line(format!(
        "client   {}",
        out.client_ip.as_deref().unwrap_or("(none)")
    ));
    match &out.route {
        Some(r) => line(format!("route    {r}")),
        None => line("route    (none)".into()),
    }
    if !out.params.is_empty() {
        let p: Vec<String> = out.params.iter().map(|(n, v)| format!("{n}={v}")).collect();
        line(format!("params   {}", p.join(", ")));
    }
    line(String::new());
    for d in &out.stages {
        line(format!(
            "{:<10} {:<28} {}",
            d.stage,
            format!("{} ({})", d.policy, d.kind),
            d.decision
        ));
    }
    if !out.stages.is_empty() {
        line(String::new());
    }
    match (&out.status, &out.upstream) {
        (Some(status), _) => {
            let mut text = format!("answer   {status}");
            if let Some(c) = &out.code {
                text.push_str(&format!(" {c}"));
            }
            if let Some(p) = &out.policy {
                text.push_str(&format!(", refused by {p}"));
            }
            line(text);
            if let Some(d) = &out.detail {
                line(format!("         {d}"));
            }
        }
        (None, Some(up)) => {
            line(format!(
                "upstream {} {} (upstream {})",
                up.method, up.path, up.pool
            ));
            for (n, v) in &up.headers {
                line(format!("         {n}: {v}"));
            }
        }
        (None, None) => line("answer   (none)".into()),
    }
    if !out.answer_headers.is_empty() {
        line("answer headers".into());
        for (n, v) in &out.answer_headers {
            line(format!("         {n}: {v}"));
        }
    }
    if !out.response_edits.is_empty() {
        line("on a 200 JSON answer".into());
        for (n, v) in &out.response_edits {
            line(format!("         {n}: {v}"));
        }
    }
    s
}
