//! The `validate` policy (and `[apis.openapi] validate = "request"`): requests are checked
//! against the operation of the API's OpenAPI document that the route and method name
//! (`crate::openapi::contract`), in the Validate stage, after the caller is identified and
//! counted and before any edit. `enforce` refuses with 400 `request_invalid` and an `errors`
//! array (at most 20); `report` passes the request and leaves its problems in the flow for the
//! proxy to log and count (`turnpike_contract_violations_total`). When several validate
//! policies apply to a request, the most specific (route, then API, then server) decides.
//! Answers can be checked too, in report mode only, on a sample.

use super::Flow;
use crate::config::policy::{ResponseMode, ValidateKeys, ValidateMode};
use crate::openapi::contract::{OpCheck, Request, Violation};
use crate::reply::{Code, Reply};
use std::sync::Arc;

/// The body read for validation by default.
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;

/// What a validate step does.
#[derive(Debug, Clone, PartialEq)]
pub struct Validate {
    pub report: bool,
    pub max_body: u64,
    /// The share of answers checked (0: none).
    pub response_sample: f64,
}

impl Validate {
    /// From the keys; `Err` is (key, message).
    pub fn compile(keys: &ValidateKeys) -> Result<Validate, (String, String)> {
        let max_body = keys.max_validated_body.map_or(DEFAULT_MAX_BODY, |s| s.0);
        if max_body == 0 {
            return Err((
                "max_validated_body".into(),
                "must be more than 0 bytes".into(),
            ));
        }
        let sample = keys.response_sample.unwrap_or(0.01);
        if !(0.0..=1.0).contains(&sample) {
            return Err((
                "response_sample".into(),
                "a share between 0 and 1, e.g. 0.01".into(),
            ));
        }
        if keys.response_sample.is_some() && keys.validate_responses != Some(ResponseMode::Report) {
            return Err((
                "response_sample".into(),
                "only with validate_responses = \"report\"".into(),
            ));
        }
        Ok(Validate {
            report: keys.mode == Some(ValidateMode::Report),
            max_body,
            response_sample: match keys.validate_responses {
                Some(ResponseMode::Report) => sample,
                _ => 0.0,
            },
        })
    }
}

/// What the Validate stage left for the proxy.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Problems found in report mode (logged and counted by the proxy).
    pub reported: Vec<Violation>,
    /// The operation whose documented answers this request's answer is checked against.
    pub response: Option<Arc<OpCheck>>,
}

/// The operation of a request among the endpoint's.
pub fn operation<'a>(ops: &'a [Arc<OpCheck>], method: &http::Method) -> Option<&'a Arc<OpCheck>> {
    ops.iter().find(|o| o.method == *method).or_else(|| {
        (*method == http::Method::HEAD)
            .then(|| ops.iter().find(|o| o.method == http::Method::GET))
            .flatten()
    })
}

/// Runs the check of `v` on a request; `Err` is the refusal (enforce mode).
pub fn run(
    v: &Validate,
    ops: &[Arc<OpCheck>],
    method: &http::Method,
    req: &Request<'_>,
    flow: &mut Flow,
) -> Result<(), Reply> {
    let problems = match operation(ops, method) {
        Some(op) => {
            if v.response_sample > 0.0 && rand::random::<f64>() < v.response_sample {
                flow.contract.response = Some(op.clone());
            }
            op.check(req)
        }
        None => vec![Violation {
            at: "path",
            name: None,
            pointer: String::new(),
            detail: format!("the API's contract has no {method} operation on this path"),
        }],
    };
    if problems.is_empty() {
        return Ok(());
    }
    if v.report {
        flow.contract.reported = problems;
        return Ok(());
    }
    let detail = match problems.len() {
        1 => "the request does not match the API's contract: 1 problem".to_string(),
        n => format!("the request does not match the API's contract: {n} problems"),
    };
    let mut reply = Reply::new(Code::RequestInvalid, detail);
    reply.errors = Some(Box::new(
        serde_json::to_value(&problems).unwrap_or_default(),
    ));
    Err(reply)
}
