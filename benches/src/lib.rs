//! Weir benchmarks. `cargo bench -p weir-bench --bench storage` runs the storage benchmark;
//! results and method are recorded in `benches/README.md`.
