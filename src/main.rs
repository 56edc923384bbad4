fn main() -> std::process::ExitCode {
    nanny::cli::main()
}
