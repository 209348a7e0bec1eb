//! Datastream benchmark (placeholder until written): see the closing note.
fn main() {}
