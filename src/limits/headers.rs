//! The `RateLimit-Policy` and `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers: lists
//! of structured-field items, one per active policy, named by a string (`"rate"`, `"minute"`,
//! `"hour"`, `"day"`, `"month"`), with `q` (quota) and `w` (window, seconds) for the policy and
//! `r` (remaining) and `t` (seconds to reset) for its state. Written with `itoa`, not `format!`:
//! these are built for every limited request.

use super::limiter::PolicyState;

fn list(
    states: &[PolicyState],
    a: &str,
    b: &str,
    f: impl Fn(&PolicyState) -> (u64, u64),
) -> String {
    let mut out = String::with_capacity(states.len() * 32);
    for (i, s) in states.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let (x, y) = f(s);
        out.push('"');
        out.push_str(s.name);
        out.push_str("\";");
        let mut digits = itoa::Buffer::new();
        out.push_str(a);
        out.push_str(digits.format(x));
        out.push(';');
        out.push_str(b);
        out.push_str(digits.format(y));
    }
    out
}

/// `RateLimit-Policy: "rate";q=10;w=2, "hour";q=450;w=3600`
pub fn policy(states: &[PolicyState]) -> String {
    list(states, "q=", "w=", |s| (s.quota, s.window_secs))
}

/// `RateLimit: "rate";r=9;t=1, "hour";r=449;t=1234`
pub fn state(states: &[PolicyState]) -> String {
    list(states, "r=", "t=", |s| (s.remaining, s.reset_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_written_as_lists_of_items() {
        let states = [
            PolicyState {
                name: "rate",
                quota: 10,
                window_secs: 2,
                remaining: 0,
                reset_secs: 1,
            },
            PolicyState {
                name: "hour",
                quota: 999_999_999_999_999,
                window_secs: 3600,
                remaining: 449,
                reset_secs: 1234,
            },
        ];
        assert_eq!(
            policy(&states),
            "\"rate\";q=10;w=2, \"hour\";q=999999999999999;w=3600"
        );
        assert_eq!(state(&states), "\"rate\";r=0;t=1, \"hour\";r=449;t=1234");
        assert_eq!(policy(&[]), "");
    }
}
