//! The `granary` binary: everything lives in `granary::cli`.

fn main() -> std::process::ExitCode {
    granary::cli::main()
}
