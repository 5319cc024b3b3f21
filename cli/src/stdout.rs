//! The CLI's intended output on stdout: the `ready` line each process prints once it listens
//! (tests and scripts read bound addresses from it) and the results of `demo` and `import`.
//! Logs go to stderr through tracing; nothing else in the workspace prints.

#![allow(clippy::print_stdout, reason = "this module is the CLI's stdout")]

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
