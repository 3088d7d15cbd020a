//! Process-wide settings that decide CPU speed (shared/notes/engine.md): a
//! retaining allocator and flush-to-zero for denormals. The binary calls [`init`]
//! first thing, before any worker thread exists (threads inherit MXCSR).

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Pins the thread count, never returns freed pages to the OS (so the kernel does not re-zero them on every
/// step), and flushes denormal floats to zero (a 20× slow-down in backward otherwise).
pub fn init() {
    // candle asks num_cpus for the thread count on every matmul, which parses
    // /proc/cpuinfo each time (4% of decoding); an explicit count short-circuits it.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: called first thing in main, before any other thread exists.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // SAFETY: sets an allocator option; valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sets the FTZ (bit 15) and DAZ (bit 6) flags of this thread's MXCSR.
    #[allow(deprecated)]
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | (1 << 15) | (1 << 6));
    }
}
