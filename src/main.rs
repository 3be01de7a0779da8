fn main() {
    std::process::exit(pgsync_rs::cli::main());
}
