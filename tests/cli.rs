//! The `granary` command line, built inside the test package (see Cargo.toml).

fn main() -> std::process::ExitCode {
    granary::cli::main()
}
