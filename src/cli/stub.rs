//! Temporary stand-in while the sink lands (shared checkout); replaced by mod.rs.
/// Entry point.
pub fn main() -> i32 {
    0
}
