//! What an expert cache did: counts, bytes and times, for `herd run --stats` and `herd bench`.

/// What an expert cache did, for `herd run --stats` and `herd bench`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExpertStats {
    pub policy: String,
    /// The byte budget, and the device bytes the slots take (≤ budget).
    pub budget: u64,
    pub capacity: u64,
    /// Slots across all MoE layers, and the experts there are.
    pub slots: usize,
    pub experts: usize,
    /// Device bytes of one expert (gate/up and down).
    pub expert_bytes: u64,
    /// The most expert bytes resident at once (≤ capacity).
    pub peak_resident: u64,
    /// Expert lookups (each distinct expert a layer call needed), hits among them, and the hits a plain LRU
    /// cache of the same size would have had on the same lookups.
    pub lookups: u64,
    pub hits: u64,
    pub lru_hits: u64,
    /// Experts written into slots, and their bytes (host to device).
    pub fetched: u64,
    pub bytes_moved: u64,
    /// Experts fetched ahead by the prefetcher, and those a layer then used.
    pub prefetched: u64,
    pub prefetch_used: u64,
    /// Seconds the forward pass spent reading experts from the source itself, waiting for the prefetcher,
    /// and writing experts to the device (the host side of the copy; a backend may finish it later).
    pub read_secs: f64,
    pub wait_secs: f64,
    pub upload_secs: f64,
    /// Rounds run because a step needed more experts than a layer had slots.
    pub extra_rounds: u64,
}

impl ExpertStats {
    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / self.lookups.max(1) as f64
    }
    pub fn lru_hit_rate(&self) -> f64 {
        self.lru_hits as f64 / self.lookups.max(1) as f64
    }
    /// Host-to-device GB/s over the time spent writing experts.
    pub fn upload_gbps(&self) -> f64 {
        if self.upload_secs > 0.0 {
            self.bytes_moved as f64 / self.upload_secs / 1e9
        } else {
            0.0
        }
    }
}

impl std::fmt::Display for ExpertStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        writeln!(
            f,
            "expert cache: budget {:.1} MiB, {} of {} experts in slots ({:.1} MiB, {:.2} MiB each, peak {:.1} MiB resident), {} eviction",
            mib(self.budget),
            self.slots,
            self.experts,
            mib(self.capacity),
            mib(self.expert_bytes),
            mib(self.peak_resident),
            self.policy
        )?;
        writeln!(
            f,
            "  lookups {}  hits {} ({:.1}%; plain LRU on the same lookups: {:.1}%)  misses {}  extra rounds {}",
            self.lookups,
            self.hits,
            100.0 * self.hit_rate(),
            100.0 * self.lru_hit_rate(),
            self.lookups - self.hits,
            self.extra_rounds
        )?;
        write!(
            f,
            "  fetched {} ({:.1} MiB)  prefetched {} (used {})  read {:.3} s  waited {:.3} s  upload {:.3} s ({:.2} GB/s)",
            self.fetched,
            mib(self.bytes_moved),
            self.prefetched,
            self.prefetch_used,
            self.read_secs,
            self.wait_secs,
            self.upload_secs,
            self.upload_gbps()
        )
    }
}
