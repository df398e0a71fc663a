//! Service load-balancing (issue 5): Maglev tables for the eBPF programs'
//! maps. The map sync and the programs themselves come next.

pub mod maglev;
