//! `/metrics` (admins only), in Prometheus' text format through the
//! official client (`prometheus-client`): the API server's watchers, and the
//! heap as glibc's allocator reports it (`mallinfo2`), so that memory held
//! and memory returned after a load can be told apart.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The API server's own metrics.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// Watches being served.
    pub watchers: Gauge,
    /// Watches closed because their client read nothing for too long.
    pub watchers_closed_slow: Counter,
    /// Watch lines sent.
    pub watch_events_sent: Counter,
    heap_in_use: Gauge,
    heap_free: Gauge,
    heap_mmapped: Gauge,
}

/// The glibc heap: bytes in use by the program, free in the heap (not yet
/// returned to the system), and in mmapped blocks.
pub fn heap() -> (i64, i64, i64) {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let m = unsafe { libc::mallinfo2() };
    (
        (m.uordblks + m.hblkhd) as i64,
        m.fordblks as i64,
        m.hblkhd as i64,
    )
}

/// Gives free heap memory back to the system (glibc's `malloc_trim`, which
/// also releases free pages inside the heap, not only at its top).
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Metrics {
    /// The metrics as Prometheus text.
    pub fn render(&self) -> String {
        let (in_use, free, mmapped) = heap();
        self.heap_in_use.set(in_use);
        self.heap_free.set(free);
        self.heap_mmapped.set(mmapped);
        let mut r = Registry::default();
        r.register(
            "weft_apiserver_watchers",
            "Watches being served",
            self.watchers.clone(),
        );
        r.register(
            "weft_apiserver_watchers_closed_slow",
            "Watches closed because their client read nothing for too long",
            self.watchers_closed_slow.clone(),
        );
        r.register(
            "weft_apiserver_watch_events_sent",
            "Watch lines sent",
            self.watch_events_sent.clone(),
        );
        r.register(
            "weft_controller_heap_in_use_bytes",
            "Heap bytes in use (glibc mallinfo2: uordblks + hblkhd)",
            self.heap_in_use.clone(),
        );
        r.register(
            "weft_controller_heap_free_bytes",
            "Free heap bytes not yet returned to the system (glibc mallinfo2: fordblks)",
            self.heap_free.clone(),
        );
        r.register(
            "weft_controller_heap_mmapped_bytes",
            "Heap bytes in mmapped blocks (glibc mallinfo2: hblkhd)",
            self.heap_mmapped.clone(),
        );
        let mut out = String::new();
        encode(&mut out, &r).expect("writing to a String");
        out
    }
}
