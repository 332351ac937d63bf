//! `locald-sandbox`: the sandbox helper on its own, a small binary that starts
//! faster than `locald` (which can serve as the helper too). `locald` uses it
//! when it is installed beside it.

fn main() {
    locald_runner_container::sandbox_main_if_requested();
    eprintln!("locald-sandbox is started by locald, not by hand");
    std::process::exit(2);
}
