//! Integration and fault tests for Weir. The tests live in `tests/tests/`; helper programs they
//! drive (for example the storage crash child) live in `src/bin/`; code shared between the two
//! lives here.

pub mod crash;
