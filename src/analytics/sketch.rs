//! A mergeable latency sketch: values (microseconds) fall into logarithmic buckets whose bounds
//! grow by `GAMMA = (1 + ALPHA) / (1 - ALPHA)`, and each bucket keeps a count (the DDSketch
//! idea). Any quantile it reports is within `ALPHA` (1 %) relative error of the true value at
//! that rank, and two sketches merge exactly by adding bucket counts, so minute sketches roll up
//! into hours and days with no loss beyond that bound. Values below 1 µs count as 1 µs.
//! Serialised as pairs of varints (bucket index delta, count).

use std::collections::BTreeMap;

/// The relative accuracy of every quantile.
pub const ALPHA: f64 = 0.01;

fn gamma_ln() -> f64 {
    ((1.0 + ALPHA) / (1.0 - ALPHA)).ln()
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sketch {
    buckets: BTreeMap<u32, u64>,
    count: u64,
}

impl Sketch {
    pub fn add(&mut self, micros: u64) {
        let v = micros.max(1) as f64;
        let index = (v.ln() / gamma_ln()).ceil().max(0.0) as u32;
        *self.buckets.entry(index).or_insert(0) += 1;
        self.count += 1;
    }

    pub fn merge(&mut self, other: &Sketch) {
        for (i, n) in &other.buckets {
            *self.buckets.entry(*i).or_insert(0) += n;
        }
        self.count += other.count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0..=1) in microseconds; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0;
        for (i, n) in &self.buckets {
            seen += n;
            if seen > rank {
                if *i == 0 {
                    return Some(1.0);
                }
                // The point of bucket (g^(i-1), g^i] whose relative distance to both ends is ALPHA.
                let g = gamma_ln().exp();
                return Some(2.0 * g.powi(*i as i32) / (g + 1.0));
            }
        }
        None
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buckets.len() * 3);
        let mut last = 0u32;
        for (i, n) in &self.buckets {
            varint(&mut out, u64::from(i - last));
            varint(&mut out, *n);
            last = *i;
        }
        out
    }

    /// Reads `to_bytes` output; `None` for anything malformed.
    pub fn from_bytes(mut b: &[u8]) -> Option<Sketch> {
        let mut s = Sketch::default();
        let mut index = 0u64;
        while !b.is_empty() {
            index += read_varint(&mut b)?;
            let n = read_varint(&mut b)?;
            let i = u32::try_from(index).ok()?;
            *s.buckets.entry(i).or_insert(0) += n;
            s.count = s.count.checked_add(n)?;
        }
        Some(s)
    }
}

pub(crate) fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn read_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (first, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(first & 0x7f) << shift;
        if first & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_stay_within_the_documented_error_and_survive_merge_and_bytes() {
        // A skewed latency distribution: 1 µs .. 2 s.
        let mut values: Vec<u64> = (1..=20_000u64).map(|i| i * i / 200 + 1).collect();
        let (mut a, mut b) = (Sketch::default(), Sketch::default());
        for (k, v) in values.iter().enumerate() {
            if k % 2 == 0 {
                a.add(*v)
            } else {
                b.add(*v)
            }
        }
        a.merge(&b);
        let a = Sketch::from_bytes(&a.to_bytes()).expect("round trip");
        assert_eq!(a.count(), 20_000);
        values.sort_unstable();
        for q in [0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let exact = values[(q * (values.len() - 1) as f64).floor() as usize] as f64;
            let got = a.quantile(q).expect("value");
            assert!(
                (got - exact).abs() <= ALPHA * exact + 1e-9,
                "q{q}: {got} vs {exact}"
            );
        }
        assert!(Sketch::from_bytes(&[0x80]).is_none());
        assert_eq!(Sketch::default().quantile(0.5), None);
    }
}
