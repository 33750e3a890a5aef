//! The telemetry series query (`GET /api/v1/devices/{id}/telemetry`):
//! metric, from/to times, bucket interval, aggregation and limit, checked
//! into a series request. Input: a query string (`metric=t&from=...`, no
//! percent-decoding).

#![no_main]

use device_service::domain::{SeriesParams, SeriesShape, SeriesSpec};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_735_689_600_000;
/// device-service's default `max_series_points`.
const MAX_POINTS: i64 = 10_000;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let mut params = SeriesParams::default();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "metric" => params.metric = Some(value),
            "from" => params.from = Some(value),
            "to" => params.to = Some(value),
            "interval" => params.interval = Some(value),
            "agg" => params.agg = Some(value),
            // Not a number: the query extractor refuses it before.
            "limit" => match value.parse() {
                Ok(limit) => params.limit = Some(limit),
                Err(_) => return,
            },
            _ => {}
        }
    }
    let Ok(spec) = SeriesSpec::parse(params, NOW, MAX_POINTS) else {
        return;
    };
    assert!(spec.from < spec.to, "{spec:?}");
    match spec.shape {
        SeriesShape::Raw { limit } => assert!((1..=MAX_POINTS).contains(&limit), "{spec:?}"),
        SeriesShape::Buckets { interval, .. } => {
            let width = i128::from(interval.millis());
            assert!(width >= 1, "{spec:?}");
            // The buckets the store can return: those holding a time in
            // [from, to), aligned to the epoch.
            let first = i128::from(spec.from).div_euclid(width);
            let last = (i128::from(spec.to) - 1).div_euclid(width);
            assert!(
                last - first < i128::from(MAX_POINTS),
                "{spec:?}: {} buckets",
                last - first + 1
            );
        }
    }
});
