//! `turnpike_requests_total` with a bounded `consumer` label. At most `limit` consumers carry
//! their own label; every other consumer is counted as `other`, so the number of series stays
//! bounded however many keys exist. The labelled set follows traffic: once per period
//! (`rebalance`) a consumer counted under `other` that sent more than the quietest labelled one
//! takes its place. The series of a consumer that lost its label are removed (they go stale in
//! Prometheus, as a series should; moving their totals into `other` would show as a false
//! spike in `rate()`), and its later requests count as `other`.

use super::names::Labels;
use foldhash::HashMap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, LabelPair, Metric, MetricFamily, MetricType};
use std::sync::{Arc, Mutex};

/// The label value for consumers without a label of their own.
pub const OTHER: &str = "other";

/// One series of `turnpike_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Series {
    pub api: Arc<str>,
    pub version: Arc<str>,
    pub route: Arc<str>,
    pub method: http::Method,
    pub class: u8,
    /// `""` for anonymous requests, `other`, or a labelled consumer's id.
    pub consumer: Arc<str>,
}

/// The consumers with a label of their own.
#[derive(Debug)]
pub struct ConsumerCap {
    limit: usize,
    /// Labelled consumers and their requests in the current period.
    labelled: HashMap<Arc<str>, u64>,
    /// Unlabelled consumers seen this period and their requests, possibly overestimated (at
    /// most `4 × limit`, at least 64, are tracked; see `label`).
    waiting: HashMap<Arc<str>, u64>,
}

impl ConsumerCap {
    pub fn new(limit: usize) -> ConsumerCap {
        ConsumerCap {
            limit,
            labelled: HashMap::default(),
            waiting: HashMap::default(),
        }
    }

    /// The label for one request of `id`.
    pub fn label(&mut self, id: &Arc<str>, other: &Arc<str>) -> Arc<str> {
        if let Some(n) = self.labelled.get_mut(&**id) {
            *n += 1;
            return id.clone();
        }
        if self.labelled.len() < self.limit {
            self.labelled.insert(id.clone(), 1);
            return id.clone();
        }
        if let Some(n) = self.waiting.get_mut(&**id) {
            *n += 1;
        } else if self.waiting.len() < (self.limit * 4).max(64) {
            self.waiting.insert(id.clone(), 1);
        } else {
            // Space-saving: the newcomer takes the place of the least counted waiting consumer
            // and inherits its count, so a busy consumer cannot be kept out by a crowd.
            let least = self
                .waiting
                .iter()
                .min_by_key(|(_, n)| **n)
                .map(|(k, n)| (k.clone(), *n));
            if let Some((k, n)) = least {
                self.waiting.remove(&k);
                self.waiting.insert(id.clone(), n + 1);
            }
        }
        other.clone()
    }

    /// Ends a period: swaps busier waiting consumers in for quieter labelled ones and returns
    /// the consumers that lost their label.
    pub fn rebalance(&mut self) -> Vec<Arc<str>> {
        let mut waiting: Vec<(Arc<str>, u64)> = self.waiting.drain().collect();
        waiting.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut labelled: Vec<(Arc<str>, u64)> =
            self.labelled.iter().map(|(k, v)| (k.clone(), *v)).collect();
        labelled.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)));
        let mut demoted = Vec::new();
        for ((busy, n), (quiet, m)) in waiting.into_iter().zip(labelled) {
            if n <= m {
                break;
            }
            self.labelled.remove(&quiet);
            self.labelled.insert(busy, 0);
            demoted.push(quiet);
        }
        for n in self.labelled.values_mut() {
            *n = 0;
        }
        demoted
    }
}

struct Counts {
    cap: ConsumerCap,
    series: HashMap<Series, u64>,
    other: Arc<str>,
}

/// The request counter, registered as a Prometheus collector.
pub struct RequestCounts {
    desc: Desc,
    counts: Mutex<Counts>,
}

impl RequestCounts {
    pub fn new(limit: usize) -> prometheus::Result<RequestCounts> {
        let desc = Desc::new(
            "turnpike_requests_total".into(),
            "Requests answered, by API, route template, method, status class and consumer".into(),
            [
                "api",
                "version",
                "route",
                "method",
                "status_class",
                "consumer",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            std::collections::HashMap::new(),
        )?;
        Ok(RequestCounts {
            desc,
            counts: Mutex::new(Counts {
                cap: ConsumerCap::new(limit),
                series: HashMap::default(),
                other: Arc::from(OTHER),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one request; its consumer gets its label (`""` stays for anonymous requests),
    /// which is returned for other series that carry it.
    pub fn add(&self, l: &Labels, method: http::Method, class: u8) -> Arc<str> {
        let mut c = self.lock();
        let consumer = if l.consumer.is_empty() {
            l.consumer.clone()
        } else {
            let other = c.other.clone();
            c.cap.label(&l.consumer, &other)
        };
        let series = Series {
            api: l.api.clone(),
            version: l.version.clone(),
            route: l.route.clone(),
            method,
            class,
            consumer: consumer.clone(),
        };
        *c.series.entry(series).or_insert(0) += 1;
        consumer
    }

    /// Ends a period of the consumer cap (see the module docs).
    pub fn rebalance(&self) {
        let mut c = self.lock();
        let demoted = c.cap.rebalance();
        if demoted.is_empty() {
            return;
        }
        c.series.retain(|s, _| !demoted.contains(&s.consumer));
    }

    /// How many series exist, and how many distinct consumer labels they use.
    pub fn shape(&self) -> (usize, usize) {
        let c = self.lock();
        let mut labels: Vec<&Arc<str>> = c.series.keys().map(|s| &s.consumer).collect();
        labels.sort();
        labels.dedup();
        (c.series.len(), labels.len())
    }
}

fn pair(name: &str, value: &str) -> LabelPair {
    let mut p = LabelPair::default();
    p.set_name(name.to_string());
    p.set_value(value.to_string());
    p
}

impl Collector for RequestCounts {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let c = self.lock();
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::COUNTER);
        let mut metrics: Vec<Metric> = c
            .series
            .iter()
            .map(|(s, n)| {
                let class = match s.class {
                    0 => "none".to_string(),
                    k => format!("{k}xx"),
                };
                let mut m = Metric::default();
                m.set_label(
                    vec![
                        pair("api", &s.api),
                        pair("consumer", &s.consumer),
                        pair("method", s.method.as_str()),
                        pair("route", &s.route),
                        pair("status_class", &class),
                        pair("version", &s.version),
                    ]
                    .into(),
                );
                let mut counter = Counter::default();
                counter.set_value(*n as f64);
                m.set_counter(counter);
                m
            })
            .collect();
        metrics.sort_by(|a, b| {
            let key = |m: &Metric| {
                m.get_label()
                    .iter()
                    .map(|l| l.get_value().to_string())
                    .collect::<Vec<_>>()
            };
            key(a).cmp(&key(b))
        });
        family.set_metric(metrics.into());
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(consumer: &str) -> Series {
        Series {
            api: Arc::from("a"),
            version: Arc::from(""),
            route: Arc::from("/a"),
            method: http::Method::GET,
            class: 2,
            consumer: Arc::from(consumer),
        }
    }

    /// One request of `consumer` to the series above.
    fn add(counts: &RequestCounts, consumer: &str) {
        let l = Labels {
            api: Arc::from("a"),
            version: Arc::from(""),
            route: Arc::from("/a"),
            consumer: Arc::from(consumer),
        };
        counts.add(&l, http::Method::GET, 2);
    }

    #[test]
    fn the_cap_holds_and_busier_consumers_take_quiet_ones_places() {
        let counts = RequestCounts::new(3).expect("desc");
        for i in 0..10_000 {
            add(&counts, &format!("c{i}"));
        }
        let (_, labels) = counts.shape();
        assert_eq!(labels, 4, "three consumers and other");
        // c9000 becomes the busiest consumer; c0..c2 stay quiet.
        for _ in 0..50 {
            add(&counts, "c9000");
        }
        counts.rebalance();
        add(&counts, "c9000");
        let c = counts.lock();
        let other: u64 = c
            .series
            .iter()
            .filter(|(s, _)| &*s.consumer == OTHER)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(other, 9_997 + 50, "other keeps its history");
        assert!(c.series.contains_key(&series("c9000")));
        assert_eq!(c.series.get(&series("c9000")), Some(&1));
        assert!(c.series.len() <= 4);
    }

    #[test]
    fn a_quiet_waiting_consumer_does_not_displace_a_busier_labelled_one() {
        let mut cap = ConsumerCap::new(1);
        let other: Arc<str> = Arc::from(OTHER);
        for _ in 0..5 {
            assert_eq!(&*cap.label(&Arc::from("big"), &other), "big");
        }
        assert_eq!(&*cap.label(&Arc::from("small"), &other), OTHER);
        assert!(cap.rebalance().is_empty());
        assert_eq!(&*cap.label(&Arc::from("big"), &other), "big");
    }
}
