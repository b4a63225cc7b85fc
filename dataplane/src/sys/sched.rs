//! Scheduling class of the calling thread.

use std::io;

/// Puts the calling thread in SCHED_FIFO at `priority` (1..=99): it then runs whenever it
/// has work, before every normal thread of its core (the NAPI threads of threaded veths
/// among them), and the kernel's RT throttling still leaves the core a share
/// (`sched_rt_runtime_us`). Needs CAP_SYS_NICE.
pub fn set_fifo(priority: u8) -> io::Result<()> {
    if !(1..=99).contains(&priority) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("SCHED_FIFO priority {priority}: 1..99"),
        ));
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: `param` is a live, initialised sched_param for the duration of the call; pid 0
    // is the calling thread; the call reads nothing else of ours.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
