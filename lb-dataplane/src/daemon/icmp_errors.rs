//! The ICMP errors a worker answers drops with, rate-limited.

use std::time::Instant;

use lb_core::pipeline::{Reason, Snapshot};

use super::egress::Egress;

/// ICMP errors (time exceeded, fragmentation needed, packet too big) one
/// worker sends per second at most, after a burst of [`ICMP_ERROR_BURST`]
/// (Linux: 1000 a second for the host, bursts of 50).
const ICMP_ERRORS_PER_SEC: u64 = 200;
const ICMP_ERROR_BURST: u64 = 50;

/// The ICMP errors a worker answers drops with (time exceeded,
/// fragmentation needed, packet too big): rate-limited by a token bucket,
/// built in one buffer reused from error to error.
pub(super) struct IcmpErrors {
    pub(super) tokens: u64,
    /// When the bucket last gained a token.
    pub(super) refilled: Instant,
    pub(super) buf: Vec<u8>,
    pub(super) sent: u64,
    pub(super) rate_limited: u64,
}

impl IcmpErrors {
    pub(super) fn new(now: Instant) -> IcmpErrors {
        IcmpErrors {
            tokens: ICMP_ERROR_BURST,
            refilled: now,
            buf: Vec::with_capacity(1500),
            sent: 0,
            rate_limited: 0,
        }
    }

    /// Takes a token if there is one.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        let gained =
            u64::try_from(elapsed.as_nanos() * u128::from(ICMP_ERRORS_PER_SEC) / 1_000_000_000)
                .unwrap_or(u64::MAX);
        if gained > 0 {
            self.tokens = self.tokens.saturating_add(gained).min(ICMP_ERROR_BURST);
            self.refilled = now;
        }
        if self.tokens == 0 {
            self.rate_limited += 1;
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// Answers a frame dropped for `reason` on ingress port `port`, if the
    /// reason calls for an ICMP error (see `Reason::icmp_answer`): from the
    /// port's address of the sender's family, back to the neighbour the
    /// frame came from. The frame is as it arrived (the pipeline drops
    /// before it rewrites).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer(
        &mut self,
        reason: &Reason,
        frame: &[u8],
        port: u32,
        port_mac: [u8; 6],
        snap: &Snapshot,
        now: Instant,
        out: &mut Egress,
    ) {
        if !matches!(reason, Reason::TtlExceeded | Reason::TooBig { .. }) {
            return;
        }
        let Ok(p) = lb_core::packet::parse(frame) else {
            return;
        };
        let Some(a) = reason.icmp_answer(&p) else {
            return;
        };
        let Some(src) = crate::health::port_address(snap, port, p.src) else {
            return;
        };
        let Some(to_mac) = frame.get(6..12).map(lb_core::packet::MacAddr::from_bytes) else {
            return;
        };
        if !self.take(now) {
            return;
        }
        let built = lb_core::packet::build_icmp_error_into(
            &mut self.buf,
            frame,
            &p,
            src,
            a.icmp_type,
            a.code,
            a.rest,
            lb_core::packet::MacAddr(port_mac),
            to_mac,
        );
        if built.is_ok() {
            out.send(port, &self.buf, snap);
            self.sent += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    pub(super) fn icmp_errors_are_rate_limited_by_a_token_bucket() {
        let t0 = Instant::now();
        let mut b = IcmpErrors::new(t0);
        let sent = (0..200).filter(|_| b.take(t0)).count();
        assert_eq!(sent as u64, ICMP_ERROR_BURST, "a burst, then nothing");
        assert_eq!(b.rate_limited, 200 - ICMP_ERROR_BURST);
        // Tokens come back at ICMP_ERRORS_PER_SEC, never above the burst.
        let later = t0 + Duration::from_millis(100);
        let sent = (0..200).filter(|_| b.take(later)).count();
        assert_eq!(sent as u64, ICMP_ERRORS_PER_SEC / 10);
        let much_later = later + Duration::from_secs(60);
        let sent = (0..200).filter(|_| b.take(much_later)).count();
        assert_eq!(sent as u64, ICMP_ERROR_BURST);
    }
}
