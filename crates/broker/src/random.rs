//! Randomness is a parameter too: jitter comes from an injected [`Random`] source, so the
//! arithmetic that uses it is a pure function and tests pin the draw.

use std::time::Duration;

/// A fraction in `[0, 1)`, stored as a numerator over 2³².
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fraction(u32);

impl Fraction {
    /// No jitter at all.
    pub const ZERO: Self = Self(0);
    /// The largest fraction below one.
    pub const MAX: Self = Self(u32::MAX);

    /// From the numerator over 2³².
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// This fraction of `d`, truncated to whole milliseconds; always below `d` unless `d` is
    /// zero.
    pub fn of(self, d: Duration) -> Duration {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let scaled = (u128::from(ms) * u128::from(self.0)) >> 32;
        Duration::from_millis(u64::try_from(scaled).unwrap_or(u64::MAX))
    }
}

/// Source of uniformly random fractions.
pub trait Random: Send + Sync + 'static {
    /// A fresh draw, uniform in `[0, 1)`.
    fn fraction(&self) -> Fraction;
}

/// The operating system's random generator (through aws-lc).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemRandom;

impl Random for SystemRandom {
    fn fraction(&self) -> Fraction {
        let mut b = [0u8; 4];
        // A failed draw only removes jitter; nothing depends on it being secret.
        let _ = aws_lc_rs::rand::fill(&mut b);
        Fraction(u32::from_le_bytes(b))
    }
}

/// Always the same draw (tests).
#[derive(Clone, Copy, Debug)]
pub struct FixedRandom(pub Fraction);

impl Random for FixedRandom {
    fn fraction(&self) -> Fraction {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fraction_of_a_duration_stays_below_it() {
        let d = Duration::from_secs(10);
        assert_eq!(Fraction::ZERO.of(d), Duration::ZERO);
        assert_eq!(Fraction::from_bits(1 << 31).of(d), Duration::from_secs(5));
        assert!(Fraction::MAX.of(d) < d);
        assert_eq!(Fraction::MAX.of(Duration::ZERO), Duration::ZERO);
    }
}
