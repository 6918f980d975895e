//! A worker's counters: packets, drops by kind and by port, rule hits,
//! and sessions per listener and per server.

use super::*;

/// Open and total sessions of a listener or a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCount {
    pub active: u64,
    pub total: u64,
}

/// Session counts by a pair of configuration indices ((load balancer,
/// listener) or (server group, server)): a dense table, so that counting a
/// new session is two index computations, not two hash-map entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionCounts {
    rows: Vec<Vec<SessionCount>>,
    /// Where an index beyond a session's 16 bits would count (none does):
    /// such a pair never makes the table grow.
    spill: SessionCount,
}

impl SessionCounts {
    /// The count of `(a, b)`, created (zero) if new.
    #[inline]
    pub fn at_mut(&mut self, (a, b): (u32, u32)) -> &mut SessionCount {
        let (a, b) = (a as usize, b as usize);
        if a > usize::from(u16::MAX) || b > usize::from(u16::MAX) {
            return &mut self.spill;
        }
        if a >= self.rows.len() {
            self.rows.resize_with(a + 1, Vec::new);
        }
        let row = &mut self.rows[a];
        if b >= row.len() {
            row.resize(b + 1, SessionCount::default());
        }
        &mut row[b]
    }

    /// The count of `(a, b)`, if it was ever counted.
    #[inline]
    pub fn get_mut(&mut self, (a, b): (u32, u32)) -> Option<&mut SessionCount> {
        self.rows.get_mut(a as usize)?.get_mut(b as usize)
    }

    /// Every pair with a session open or counted, and its count.
    pub fn iter(&self) -> impl Iterator<Item = ((u32, u32), &SessionCount)> + '_ {
        self.rows.iter().enumerate().flat_map(|(a, row)| {
            row.iter()
                .enumerate()
                .filter(|(_, c)| c.active > 0 || c.total > 0)
                .map(move |(b, c)| ((a as u32, b as u32), c))
        })
    }

    /// Forgets every count (keeps the memory).
    pub fn clear(&mut self) {
        for row in &mut self.rows {
            row.fill(SessionCount::default());
        }
    }
}

/// Per-worker counters. The maps are keyed by configuration indices and
/// refer to the generation the worker last adopted (`generation`).
#[derive(Debug, Clone)]
pub struct Stats {
    pub rx: u64,
    pub forwarded: u64,
    pub local: u64,
    pub drops: [u64; DropKind::COUNT],
    pub sessions_created: u64,
    pub generation: u64,
    /// Packets decided by each rule (or default) since the last reload.
    pub rule_hits: HashMap<Origin, u64>,
    /// Per (load balancer, listener).
    pub listener_sessions: SessionCounts,
    /// Per (server group, server).
    pub server_sessions: SessionCounts,
    /// Per (load balancer, listener), in `total`: opening packets its
    /// limits refused (`listener_limit` drops) since the last reload.
    pub listener_limited: SessionCounts,
    /// Half-open sessions dropped to make room for a new session (a full
    /// session table, or no local port left).
    pub early_drops: u64,
    /// SYN-ACKs with a cookie the SYN proxy sent.
    pub syn_cookies_sent: u64,
    /// ACKs with a valid cookie (sessions the SYN proxy opened).
    pub syn_cookies_valid: u64,
    /// ACKs without a session to a listener with a SYN proxy whose cookie
    /// was wrong or too old.
    pub syn_cookies_invalid: u64,
    /// Per port (index into `cfg.ports`): drops of the port's own checks.
    pub port_drops: Vec<PortDrops>,
    /// IP fragments (see `fragment.rs`).
    pub fragments: FragmentCounts,
    /// Sessions of draining servers ended at their drain deadline.
    pub drain_closed: u64,
}

/// Drops counted per ingress port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortDrops {
    pub spoofed_source: u64,
    pub vlan_mismatch: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            rx: 0,
            forwarded: 0,
            local: 0,
            drops: [0; DropKind::COUNT],
            sessions_created: 0,
            generation: 0,
            rule_hits: HashMap::new(),
            listener_sessions: SessionCounts::default(),
            server_sessions: SessionCounts::default(),
            listener_limited: SessionCounts::default(),
            port_drops: Vec::new(),
            early_drops: 0,
            syn_cookies_sent: 0,
            syn_cookies_valid: 0,
            syn_cookies_invalid: 0,
            fragments: FragmentCounts::default(),
            drain_closed: 0,
        }
    }
}
