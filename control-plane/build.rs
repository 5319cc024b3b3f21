//! Rebuilds the crate when a migration changes: `sqlx::migrate!` embeds the SQL at compile
//! time, and cargo does not otherwise know the migration files are inputs.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
