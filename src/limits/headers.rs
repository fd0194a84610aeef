//! The `RateLimit-Policy` and `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers: lists
//! of structured-field items, one per active policy, named by a string (`"rate"`, `"minute"`,
//! `"hour"`, `"day"`, `"month"`), with `q` (quota) and `w` (window, seconds) for the policy and
//! `r` (remaining) and `t` (seconds to reset) for its state.

use super::limiter::PolicyState;
use std::fmt::Write;

/// `RateLimit-Policy: "rate";q=10;w=2, "hour";q=450;w=3600`
pub fn policy(states: &[PolicyState]) -> String {
    let mut out = String::new();
    for (i, s) in states.iter().enumerate() {
        let sep = if i > 0 { ", " } else { "" };
        let _ = write!(out, "{sep}\"{}\";q={};w={}", s.name, s.quota, s.window_secs);
    }
    out
}

/// `RateLimit: "rate";r=9;t=1, "hour";r=449;t=1234`
pub fn state(states: &[PolicyState]) -> String {
    let mut out = String::new();
    for (i, s) in states.iter().enumerate() {
        let sep = if i > 0 { ", " } else { "" };
        let _ = write!(
            out,
            "{sep}\"{}\";r={};t={}",
            s.name, s.remaining, s.reset_secs
        );
    }
    out
}
