//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table
//! of `M` slots (M prime) filled with backend ids so that every backend owns
//! almost exactly M/N slots and a change of backends moves few slots. The
//! eBPF programs pick a flow's backend as `table[hash(flow) % M]`.
//!
//! Every node must compute the same table for the same backends, so the
//! permutation comes from a fixed hash of each backend's key (its
//! `ip:port`), never from a per-process random seed, and the input order
//! does not matter.

/// Table size Cilium uses by default: prime, and large enough that 100
/// backends get about 164 slots each.
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;

/// One backend: the id the eBPF maps use, and the key its slots hash from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Id stored in the table (an index into the backends map).
    pub id: u32,
    /// Stable key, e.g. `10.244.1.7:8080`.
    pub key: String,
}

/// Why a table cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    /// The size is not a prime (the permutations would not cover the table).
    #[error("the Maglev table size must be a prime, not {0}")]
    NotPrime(u32),
    /// More backends than slots.
    #[error("{backends} backends do not fit a Maglev table of {size} slots")]
    TooManyBackends {
        /// Backends asked for.
        backends: usize,
        /// Table size.
        size: u32,
    },
    /// Two backends with one key would share one permutation.
    #[error("backend key {0:?} appears twice")]
    DuplicateKey(String),
}

/// 64-bit FNV-1a with a seed folded in first: fixed, fast and well spread
/// for short keys, and the same on every node.
fn fnv1a(seed: u64, data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in seed.to_le_bytes().iter().chain(data) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final avalanche (splitmix64's), so nearby keys land far apart.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Builds the table of `size` slots for `backends` (empty when there are
/// none). The result does not depend on the order of `backends`.
///
/// # Errors
/// A size that is not prime, more backends than slots, or a key twice.
pub fn table(backends: &[Backend], size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    if backends.len() > size as usize {
        return Err(MaglevError::TooManyBackends {
            backends: backends.len(),
            size,
        });
    }
    if backends.is_empty() {
        return Ok(Vec::new());
    }
    let mut sorted: Vec<&Backend> = backends.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    if let Some(w) = sorted.windows(2).find(|w| w[0].key == w[1].key) {
        return Err(MaglevError::DuplicateKey(w[0].key.clone()));
    }
    let m = u64::from(size);
    // Each backend's permutation of the slots: offset + j * skip (mod M).
    let perms: Vec<(u64, u64)> = sorted
        .iter()
        .map(|b| {
            let offset = fnv1a(0x6d61_676c_6576_0001, b.key.as_bytes()) % m;
            let skip = fnv1a(0x6d61_676c_6576_0002, b.key.as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut slots: Vec<Option<u32>> = vec![None; size as usize];
    let mut filled = 0usize;
    // Backends take turns claiming their next free preferred slot, so their
    // shares differ by at most one.
    loop {
        for (i, b) in sorted.iter().enumerate() {
            let (offset, skip) = perms[i];
            let mut c = (offset + next[i] * skip) % m;
            while slots[c as usize].is_some() {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            slots[c as usize] = Some(b.id);
            next[i] += 1;
            filled += 1;
            if filled == size as usize {
                return Ok(slots
                    .into_iter()
                    .map(|s| s.expect("every slot filled"))
                    .collect());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u32) -> Vec<Backend> {
        (0..n)
            .map(|i| Backend {
                id: i,
                key: format!("10.244.{}.{}:8080", i / 250, i % 250 + 2),
            })
            .collect()
    }

    fn shares(t: &[u32], n: u32) -> Vec<usize> {
        (0..n)
            .map(|i| t.iter().filter(|x| **x == i).count())
            .collect()
    }

    #[test]
    fn every_slot_is_filled_and_shares_differ_by_at_most_one() {
        for n in [1, 2, 3, 10, 100] {
            let t = table(&backends(n), DEFAULT_TABLE_SIZE).unwrap();
            assert_eq!(t.len(), DEFAULT_TABLE_SIZE as usize);
            let s = shares(&t, n);
            let (min, max) = (*s.iter().min().unwrap(), *s.iter().max().unwrap());
            assert!(max - min <= 1, "n={n}: shares {min}..{max}");
            assert_eq!(s.iter().sum::<usize>(), DEFAULT_TABLE_SIZE as usize);
        }
    }

    #[test]
    fn the_order_of_backends_does_not_matter() {
        let mut b = backends(7);
        let t1 = table(&b, 251).unwrap();
        b.reverse();
        assert_eq!(t1, table(&b, 251).unwrap());
    }

    #[test]
    fn removing_a_backend_moves_few_other_slots() {
        // Only the removed backend's slots must move; Maglev moves a few
        // more: 0.65% of the table for 10 backends and 1.29% for 100 with
        // these keys. The bound leaves room for other keys.
        for n in [10u32, 100] {
            let all = backends(n);
            let before = table(&all, DEFAULT_TABLE_SIZE).unwrap();
            let gone = n / 2;
            let rest: Vec<Backend> = all.into_iter().filter(|b| b.id != gone).collect();
            let after = table(&rest, DEFAULT_TABLE_SIZE).unwrap();
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| **b != gone && b != a)
                .count();
            let pct = moved as f64 * 100.0 / f64::from(DEFAULT_TABLE_SIZE);
            assert!(
                pct < 2.0,
                "n={n}: {moved} slots of other backends moved ({pct:.2}%)"
            );
            assert!(!after.contains(&gone));
        }
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(table(&backends(2), 100), Err(MaglevError::NotPrime(100)));
        assert_eq!(table(&backends(2), 1), Err(MaglevError::NotPrime(1)));
        assert!(matches!(
            table(&backends(8), 7),
            Err(MaglevError::TooManyBackends { .. })
        ));
        let mut b = backends(2);
        b[1].key = b[0].key.clone();
        assert!(matches!(table(&b, 13), Err(MaglevError::DuplicateKey(_))));
        assert_eq!(table(&[], 13), Ok(Vec::new()));
    }
}
