//! The CLI's intended output on stdout: the `ready` line each process prints once it listens
//! (tests and scripts read bound addresses from it) and the results of `demo` and `import`.
//! Logs go to stderr through tracing; nothing else in the workspace prints.

#![allow(clippy::print_stdout, reason = "this module is the CLI's stdout")]

/// The `modelgw <component> ready: k=v …` line, flushed at once: tests and scripts wait for it.
pub(crate) fn print_ready(component: &str, fields: &[(&str, String)]) {
    use std::io::Write;
    let mut line = format!("modelgw {component} ready:");
    for (k, v) in fields {
        line.push_str(&format!(" {k}={v}"));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints one line of intended output (use the `out!` macro).
pub fn line(args: std::fmt::Arguments<'_>) {
    println!("{args}");
}

/// `println!` for the CLI's intended output.
macro_rules! out {
    () => {
        $crate::stdout::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::stdout::line(format_args!($($arg)*))
    };
}
pub(crate) use out;
