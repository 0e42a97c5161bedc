//! Where a key goes: its log partition, and within the partition its worker.
//!
//! Both derive from one stable 64-bit hash of (db, table, primary key) — FNV-1a then a
//! murmur3 finaliser, fixed forever because partition numbers are stored in the log.
//! The worker uses the hash's quotient by the partition count, not its remainder:
//! taking `h % workers` would send every key of partition `p` to worker `p % workers`
//! whenever the counts share a factor (P=8, N=4: one busy worker, three idle).

pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // fmix64: spreads FNV's weak low bits.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

pub fn partition_of(hash: u64, partitions: u32) -> u32 {
    (hash % partitions.max(1) as u64) as u32
}

pub fn worker_of(hash: u64, partitions: u32, workers: u32) -> u32 {
    ((hash / partitions.max(1) as u64) % workers.max(1) as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN_DB_T_1: u64 = 17138327746758258925;

    #[test]
    fn the_hash_is_fixed_forever() {
        // Stored data depends on these values: changing them reorders keys.
        assert_eq!(key_hash(b""), 17280346270528514342);
        assert_eq!(key_hash(b"db.t#1"), GOLDEN_DB_T_1);
        assert_ne!(key_hash(b"db.t#1"), key_hash(b"db.t#2"));
    }

    #[test]
    fn every_worker_of_a_partition_gets_keys() {
        let (p, n) = (8, 4);
        let mut seen = vec![vec![0u32; n as usize]; p as usize];
        for i in 0..10_000u32 {
            let h = key_hash(&i.to_le_bytes());
            seen[partition_of(h, p) as usize][worker_of(h, p, n) as usize] += 1;
        }
        for (part, workers) in seen.iter().enumerate() {
            for (w, &count) in workers.iter().enumerate() {
                assert!(
                    count > 150,
                    "partition {part} worker {w} got only {count} of ~312 keys"
                );
            }
        }
    }
}
