//! When to renew: at the window the CA suggests (ACME Renewal Information) when it offers
//! one, else at two thirds of the lifetime; a point inside the window chosen with jitter so
//! a fleet does not renew in step. Pure functions of times (Unix seconds).

/// A certificate's validity, Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// Reads notBefore/notAfter from the first certificate of a PEM chain.
    pub fn of_pem(chain_pem: &str) -> Option<Validity> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).ok()?;
        let cert = pem.parse_x509().ok()?;
        Some(Validity {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// The moment to renew. `window`: the CA's suggested (start, end), if any. `fraction`
/// (0..1, default 2/3) of the lifetime is the fallback point; `jitter` in [0, 1) picks a
/// point inside the CA's window, or up to 1/30 of the lifetime before the fallback point.
pub fn renew_at(v: Validity, window: Option<(i64, i64)>, fraction: f64, jitter: f64) -> i64 {
    let jitter = jitter.clamp(0.0, 0.999_999);
    if let Some((start, end)) = window.filter(|(s, e)| e > s) {
        return start + ((end - start) as f64 * jitter) as i64;
    }
    let life = (v.not_after - v.not_before).max(0) as f64;
    let point = v.not_before + (life * fraction.clamp(0.0, 1.0)) as i64;
    point - (life / 30.0 * jitter) as i64
}

/// How a failed order is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub rate_limited: bool,
    /// The CA's `Retry-After`, seconds.
    pub retry_after: Option<u64>,
}

/// First retry after a failure; doubled each time up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: i64 = 5;
pub const BACKOFF_MAX: i64 = 3600;
/// A rate limit without `Retry-After` waits this long (Let's Encrypt's limits refill over
/// hours to a week).
pub const RATE_LIMITED_WAIT: i64 = 3600;
/// How often renewal information is asked for when the CA does not say (`Retry-After` of
/// its renewal-info answer, clamped to 1 min ..= 1 day).
pub const WINDOW_RECHECK: i64 = 6 * 3600;

/// The renewal schedule of one certificate: when it is due, when to ask the CA for its
/// window again, and the back-off after failures. A state machine over Unix seconds; the
/// node's ACME loop drives it.
#[derive(Debug, Clone)]
pub struct Schedule {
    jitter: f64,
    /// The CA's window, for the certificate expiring at `.0`.
    window: Option<(i64, (i64, i64))>,
    window_check_at: i64,
    failures: u32,
    retry_at: i64,
}

/// What the schedule says about a certificate now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Order now (none held, or the renewal point passed).
    Now,
    /// Not before this moment (renewal point, or the end of a back-off).
    At(i64),
}

impl Schedule {
    /// `jitter` in [0, 1): where in the window (or how early before the fallback point) this
    /// certificate renews, drawn once so a fleet spreads out.
    pub fn new(jitter: f64) -> Schedule {
        Schedule {
            jitter,
            window: None,
            window_check_at: 0,
            failures: 0,
            retry_at: 0,
        }
    }

    /// Whether to ask the CA for the renewal window of `current` now.
    pub fn wants_window(&self, now: i64, current: Validity) -> bool {
        now >= self.window_check_at || self.window.is_some_and(|(na, _)| na != current.not_after)
    }

    /// Records the CA's answer: a window (start, end) and when to ask again, or `None` (the
    /// CA offers no renewal information: the lifetime fraction rules).
    pub fn set_window(&mut self, now: i64, current: Validity, window: Option<((i64, i64), u64)>) {
        match window {
            Some((w, check_after)) => {
                self.window = Some((current.not_after, w));
                self.window_check_at = now + (check_after as i64).clamp(60, 86_400);
            }
            None => {
                self.window = None;
                self.window_check_at = now + WINDOW_RECHECK;
            }
        }
    }

    /// The renewal point of `current`: the CA's window when it gave one for this very
    /// certificate, else `fraction` of the lifetime; `max_age` (seconds) caps it.
    pub fn renew_point(&self, current: Validity, fraction: f64, max_age: Option<u64>) -> i64 {
        let window = self
            .window
            .filter(|(na, _)| *na == current.not_after)
            .map(|(_, w)| w);
        let by_age = max_age.map_or(i64::MAX, |a| current.not_before + a as i64);
        renew_at(current, window, fraction, self.jitter).min(by_age)
    }

    /// Whether to order for a certificate holding `current` (none: order).
    pub fn due(
        &self,
        now: i64,
        current: Option<Validity>,
        fraction: f64,
        max_age: Option<u64>,
    ) -> Due {
        let at = current
            .map_or(i64::MIN, |c| self.renew_point(c, fraction, max_age))
            .max(self.retry_at);
        if now >= at {
            Due::Now
        } else {
            Due::At(at)
        }
    }

    /// After a failed order: the wait (seconds) until the next try. `Retry-After` is honoured
    /// as given; otherwise exponential back-off, or an hour for a rate limit.
    pub fn failed(&mut self, now: i64, f: Failure) -> i64 {
        self.failures += 1;
        let backoff = BACKOFF_BASE
            .saturating_mul(1 << (self.failures - 1).min(20))
            .min(BACKOFF_MAX);
        let wait = match (f.retry_after, f.rate_limited) {
            (Some(s), _) => (s as i64).max(1),
            (None, true) => RATE_LIMITED_WAIT,
            (None, false) => backoff,
        };
        self.retry_at = now + wait;
        wait
    }

    /// After a certificate was issued: the back-off ends; its window is asked for afresh.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = 0;
        self.window = None;
        self.window_check_at = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the CA gave a window (for the certificate it was last asked about).
    pub fn has_window(&self) -> bool {
        self.window.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn two_thirds_of_the_lifetime_without_a_window() {
        let v = Validity {
            not_before: 0,
            not_after: 90 * DAY,
        };
        assert_eq!(renew_at(v, None, 2.0 / 3.0, 0.0), 60 * DAY);
        // Jitter moves it earlier, by at most 3 days for 90-day certificates.
        let early = renew_at(v, None, 2.0 / 3.0, 0.99);
        assert!(early < 60 * DAY && early > 57 * DAY, "{early}");
        // Short-lived (6-day) certificates renew after 4 days.
        let short = Validity {
            not_before: 0,
            not_after: 6 * DAY,
        };
        assert_eq!(renew_at(short, None, 2.0 / 3.0, 0.0), 4 * DAY);
    }

    #[test]
    fn the_cas_window_wins_and_a_bad_window_is_ignored() {
        let v = Validity {
            not_before: 0,
            not_after: 90 * DAY,
        };
        assert_eq!(
            renew_at(v, Some((30 * DAY, 32 * DAY)), 2.0 / 3.0, 0.5),
            31 * DAY
        );
        assert_eq!(
            renew_at(v, Some((32 * DAY, 30 * DAY)), 2.0 / 3.0, 0.0),
            60 * DAY
        );
    }

    #[test]
    fn the_schedule_follows_the_window_of_the_certificate_it_was_given_for() {
        let v = Validity {
            not_before: 0,
            not_after: 90 * DAY,
        };
        let mut s = Schedule::new(0.5);
        assert_eq!(s.due(0, None, 2.0 / 3.0, None), Due::Now, "nothing held");
        assert!(s.wants_window(0, v));
        // No renewal information: two thirds minus the jitter.
        s.set_window(0, v, None);
        assert!(!s.wants_window(3600, v));
        assert!(s.wants_window(WINDOW_RECHECK, v));
        assert_eq!(
            s.due(DAY, Some(v), 2.0 / 3.0, None),
            Due::At(60 * DAY - 3 * DAY / 2)
        );
        // The CA's window moves it, and asks to be asked again in 2 h.
        s.set_window(DAY, v, Some(((30 * DAY, 32 * DAY), 7200)));
        assert_eq!(s.due(DAY, Some(v), 2.0 / 3.0, None), Due::At(31 * DAY));
        assert_eq!(s.due(31 * DAY, Some(v), 2.0 / 3.0, None), Due::Now);
        assert!(!s.wants_window(DAY + 7199, v) && s.wants_window(DAY + 7200, v));
        // A window asked for another certificate does not apply to a new one.
        let renewed = Validity {
            not_before: 31 * DAY,
            not_after: 121 * DAY,
        };
        assert!(s.wants_window(DAY + 1, renewed));
        assert_eq!(
            s.due(32 * DAY, Some(renewed), 2.0 / 3.0, None),
            Due::At(31 * DAY + 60 * DAY - 3 * DAY / 2)
        );
        // A maximum age comes first when it is earlier.
        assert_eq!(s.due(0, Some(v), 2.0 / 3.0, Some(600)), Due::At(600));
    }

    #[test]
    fn failures_back_off_exponentially_and_retry_after_is_honoured() {
        let v = Validity {
            not_before: 0,
            not_after: 90 * DAY,
        };
        let plain = Failure {
            rate_limited: false,
            retry_after: None,
        };
        let mut s = Schedule::new(0.0);
        let now = 60 * DAY;
        let waits: Vec<i64> = (0..12).map(|_| s.failed(now, plain)).collect();
        assert_eq!(&waits[..5], &[5, 10, 20, 40, 80]);
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
        assert_eq!(
            s.due(now, Some(v), 2.0 / 3.0, None),
            Due::At(now + BACKOFF_MAX)
        );
        // The CA's Retry-After wins over the back-off, shorter or longer.
        assert_eq!(
            s.failed(
                now,
                Failure {
                    rate_limited: false,
                    retry_after: Some(7)
                }
            ),
            7
        );
        assert_eq!(s.due(now + 6, Some(v), 2.0 / 3.0, None), Due::At(now + 7));
        assert_eq!(s.due(now + 7, Some(v), 2.0 / 3.0, None), Due::Now);
        // A rate limit without one waits an hour; with one, as long as it says.
        assert_eq!(
            s.failed(
                now,
                Failure {
                    rate_limited: true,
                    retry_after: None
                }
            ),
            RATE_LIMITED_WAIT
        );
        assert_eq!(
            s.failed(
                now,
                Failure {
                    rate_limited: true,
                    retry_after: Some(2 * 86_400)
                }
            ),
            2 * 86_400
        );
        // Success clears the back-off: the renewal point rules again.
        s.succeeded();
        assert_eq!(s.failures(), 0);
        assert_eq!(s.due(now, Some(v), 2.0 / 3.0, None), Due::Now);
        assert_eq!(s.due(DAY, Some(v), 2.0 / 3.0, None), Due::At(60 * DAY));
    }
}
