//! What the fuzz targets share: the district they validate against, a fixed "now", and the
//! one property every record of a device body must have.

use floodcmd_ingest::decode::RawRecord;
use floodcmd_ingest::validate::{TimeLimits, Validator};
use floodcmd_model::time::Millis;
use floodcmd_model::District;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The largest single allocation a decoder may make for one input (libFuzzer's
/// `-malloc_limit_mb=512`, which only works under a sanitizer's malloc hooks: the targets are
/// built without one, so the limit is enforced here).
pub const MAX_ALLOCATION: usize = 512 << 20;

/// The most a target may hold at once (beside libFuzzer's own `-rss_limit_mb`, which polls).
pub const MAX_LIVE: usize = 1536 << 20;

/// The system allocator, aborting on an allocation over [`MAX_ALLOCATION`] or beyond
/// [`MAX_LIVE`] bytes held: libFuzzer takes the abort as a crash and saves the input, so an
/// unbounded allocation is found like a panic is.
pub struct LimitedAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);

fn too_much(size: usize) -> ! {
    // No allocation here: write the reason with a fixed buffer and abort.
    use std::io::Write;
    let mut buf = [0u8; 128];
    let mut w = &mut buf[..];
    let _ = write!(
        w,
        "floodcmd-fuzz: allocation of {size} bytes over the limit\n"
    );
    let n = 128 - w.len();
    let _ = std::io::stderr().write_all(&buf[..n]);
    std::process::abort()
}

// SAFETY: every call is passed on to `System` unchanged; only counts are kept beside it.
unsafe impl GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        if size > MAX_ALLOCATION || LIVE.fetch_add(size, Ordering::Relaxed) + size > MAX_LIVE {
            too_much(size);
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        if size > MAX_ALLOCATION || LIVE.fetch_add(size, Ordering::Relaxed) + size > MAX_LIVE {
            too_much(size);
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let grow = new_size - layout.size();
            if new_size > MAX_ALLOCATION
                || LIVE.fetch_add(grow, Ordering::Relaxed) + grow > MAX_LIVE
            {
                too_much(new_size);
            }
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc;

/// Processing time of every target (2026-07-02, inside the seeds' storm).
pub const NOW: Millis = 1_783_000_000_000;

/// The gateway's limits in `config/floodcmd.toml`: 5 minutes ahead, 72 hours back.
pub const LIMITS: TimeLimits = TimeLimits {
    max_future_ms: 300_000,
    retention_ms: 72 * 3_600_000,
};

/// The sample district (`config/xincheng.toml`), parsed once.
pub fn district() -> &'static District {
    static D: OnceLock<District> = OnceLock::new();
    D.get_or_init(|| {
        District::from_toml_str(include_str!("../../config/xincheng.toml"))
            .expect("the sample district is valid")
    })
}

/// Judge every record of a split body as the gateway does, and check that each one became
/// either a reading floodcmd can compute with or a reject that says why. Returns
/// (readings, rejects); their sum is always `records.len()`.
pub fn judge(records: &[RawRecord<'_>], body: &[u8]) -> (usize, usize) {
    let district = district();
    let mut validator = Validator::new(LIMITS);
    let (mut readings, mut rejects) = (0, 0);
    let body_range = body.as_ptr() as usize..body.as_ptr() as usize + body.len() + 1;
    for rec in records {
        // A reject carries the record's own bytes: they must be a slice of the body.
        assert!(body_range.contains(&(rec.bytes.as_ptr() as usize)));
        match &rec.parsed {
            Err((_, detail)) => {
                assert!(!detail.trim().is_empty(), "a parse reject without a reason");
                rejects += 1;
            }
            Ok(r) => match validator.validate(district, r, NOW) {
                Ok(reading) => {
                    let sensor = district
                        .sensor(&reading.sensor)
                        .expect("a valid reading names a known sensor");
                    assert_eq!(reading.sensor, r.sensor);
                    assert_eq!(reading.point, sensor.point.id);
                    assert_eq!(reading.kind, sensor.sensor.kind);
                    assert!(reading.value.is_finite(), "{}", reading.value);
                    let (lo, hi) = reading.kind.physical_range();
                    assert!((lo..=hi).contains(&reading.value), "{}", reading.value);
                    assert!(reading.ts_ms <= NOW + LIMITS.max_future_ms);
                    assert!(reading.ts_ms >= NOW - LIMITS.retention_ms);
                    assert_eq!(reading.received_ms, NOW);
                    readings += 1;
                }
                Err(refusal) => {
                    assert!(!refusal.detail.trim().is_empty(), "{refusal:?}");
                    assert_eq!(refusal.sensor.as_deref(), Some(r.sensor.as_str()));
                    rejects += 1;
                }
            },
        }
    }
    assert_eq!(readings + rejects, records.len());
    (readings, rejects)
}
