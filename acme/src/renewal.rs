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
}
