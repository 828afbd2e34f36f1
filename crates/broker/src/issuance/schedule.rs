//! The pure arithmetic of issuance: whether a token is valid long enough, when to refresh ahead,
//! and the token set after a refresh. "Now" and the jitter draw are arguments, so tests pin them.

use crate::clock::Timestamp;
use crate::gateway::GrantedTokens;
use crate::random::Fraction;
use crate::tokens::TokenBundle;
use std::time::Duration;

/// The largest share of a token's lifetime a request may demand: a quarter. A token fresh from
/// the provider then satisfies any request and serves for three quarters of its lifetime, so
/// whatever callers ask a credential is refreshed at most once per three quarters of a lifetime
/// (`min_valid_for` at or above the lifetime no longer refreshes on every call). For hourly
/// tokens a quarter (15 min) exceeds both the default `min_valid_for` (3 min 45 s) and the
/// refresh-ahead window (10 min): they behave as before. A half would honour longer requests but
/// refresh short-lived tokens twice per lifetime.
pub const LIFETIME_SHARE: u32 = 4;

/// A token's lifetime: from when the provider issued it to its expiry. `None` when either is
/// unknown (imported tokens, tokens without expiry).
pub fn lifetime(bundle: &TokenBundle) -> Option<Duration> {
    let (obtained, expires) = (bundle.obtained_at?, bundle.access_expires_at?);
    let ms = u64::try_from(expires.as_millis().checked_sub(obtained.as_millis())?).ok()?;
    Some(Duration::from_millis(ms))
}

/// The validity a request needs from a token of this lifetime: what it asked for, but never
/// more than [`LIFETIME_SHARE`] of the lifetime (when known).
pub fn required_validity(min_valid: Duration, lifetime: Option<Duration>) -> Duration {
    lifetime.map_or(min_valid, |l| min_valid.min(l / LIFETIME_SHARE))
}

/// Whether a token expiring at `expires_at` is still valid `min_valid` after `now` (a token
/// without expiry always is).
pub fn valid_for(expires_at: Option<Timestamp>, now: Timestamp, min_valid: Duration) -> bool {
    expires_at.is_none_or(|e| e > now.plus(min_valid))
}

/// Whether a token (expiring at `expires_at`, of `lifetime`) is good enough at `now` for a
/// request of `min_valid` (see [`required_validity`]).
pub fn satisfies(
    expires_at: Option<Timestamp>,
    lifetime: Option<Duration>,
    now: Timestamp,
    min_valid: Duration,
) -> bool {
    valid_for(expires_at, now, required_validity(min_valid, lifetime))
}

/// When the background refresher should next look at a credential: ahead of the access token's
/// expiry, and before a refresh token that lapses when unused expires. The lead before expiry is
/// `window`, at most [`LIFETIME_SHARE`] of the token's lifetime (so callers, who need no more
/// than that share, find a fresh token and short-lived tokens are refreshed once per lifetime
/// rather than twice), or at most half the time left when the lifetime is unknown; a jitter of
/// up to a quarter of the lead makes it earlier. `None` when nothing
/// will ever need refreshing (no refresh token, or a token that does not expire and cannot
/// lapse). `jitter` is a random draw: it spreads refreshes of tokens obtained together.
pub fn next_refresh_at(
    now: Timestamp,
    bundle: &TokenBundle,
    window: Duration,
    refresh_token_idle: Option<Duration>,
    jitter: Fraction,
) -> Option<Timestamp> {
    bundle.refresh_token.as_ref()?;
    let ahead = bundle.access_expires_at.map(|e| {
        let remaining = Duration::from_millis(
            u64::try_from(e.as_millis().saturating_sub(now.as_millis())).unwrap_or(0),
        );
        let lead = window.min(lifetime(bundle).map_or(remaining / 2, |l| l / LIFETIME_SHARE));
        e.minus(lead + jitter.of(lead / 4))
    });
    let idle = refresh_token_idle
        .map(|i| now.plus(i.saturating_sub((i / 10).max(Duration::from_secs(86_400)).min(i / 2))));
    match (ahead, idle) {
        (Some(a), Some(i)) => Some(a.min(i)),
        (a, i) => a.or(i),
    }
}

/// The token set after a refresh at `now`: new values where the provider gave them, the old
/// refresh token (and id token, refresh expiry) kept when none was returned.
pub fn merge(old: &TokenBundle, granted: GrantedTokens, now: Timestamp) -> TokenBundle {
    let mut extras = old.extras.clone();
    extras.extend(granted.extras);
    TokenBundle {
        access_token: granted.access_token,
        refresh_token: granted.refresh_token.or_else(|| old.refresh_token.clone()),
        id_token: granted.id_token.or_else(|| old.id_token.clone()),
        token_type: granted.token_type,
        access_expires_at: granted.expires_in.map(|d| now.plus(d)),
        refresh_expires_at: granted
            .refresh_expires_in
            .map(|d| now.plus(d))
            .or(old.refresh_expires_at),
        obtained_at: Some(now),
        extras,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::{ExposeSecret, SecretString};
    use std::collections::BTreeMap;

    const NOW: Timestamp = Timestamp::from_millis(1_700_000_000_000);

    fn bundle(expires_in: Option<Duration>, refresh: bool) -> TokenBundle {
        TokenBundle {
            access_token: SecretString::from("at-old"),
            refresh_token: refresh.then(|| SecretString::from("rt-old")),
            id_token: Some(SecretString::from("id-old")),
            token_type: "Bearer".into(),
            access_expires_at: expires_in.map(|d| NOW.plus(d)),
            refresh_expires_at: Some(NOW.plus(Duration::from_secs(86_400))),
            obtained_at: None,
            extras: BTreeMap::from([("instance_url".into(), "https://old".into())]),
        }
    }

    fn granted(refresh: Option<&str>) -> GrantedTokens {
        GrantedTokens {
            access_token: SecretString::from("at-new"),
            refresh_token: refresh.map(SecretString::from),
            id_token: None,
            token_type: "Bearer".into(),
            expires_in: Some(Duration::from_secs(3600)),
            refresh_expires_in: None,
            scopes: None,
            extras: BTreeMap::from([("cloud_id".into(), "c1".into())]),
        }
    }

    #[test]
    fn validity_is_strictly_more_than_the_minimum() {
        let exp = Some(NOW.plus(Duration::from_secs(60)));
        assert!(valid_for(exp, NOW, Duration::from_secs(59)));
        assert!(!valid_for(exp, NOW, Duration::from_secs(60)));
        assert!(valid_for(None, NOW, Duration::from_secs(1_000_000)));
    }

    #[test]
    fn refresh_ahead_leads_expiry_by_the_window_or_half_the_time_left_plus_jitter() {
        let window = Duration::from_secs(600);
        let hour = bundle(Some(Duration::from_secs(3600)), true);
        let exp = NOW.plus(Duration::from_secs(3600));
        assert_eq!(
            next_refresh_at(NOW, &hour, window, None, Fraction::ZERO),
            Some(exp.minus(window))
        );
        // The jitter moves it earlier by up to a quarter of the lead, and by nothing else.
        let half = Fraction::from_bits(1 << 31);
        assert_eq!(
            next_refresh_at(NOW, &hour, window, None, half),
            Some(exp.minus(window + Duration::from_secs(75)))
        );
        // Less time left than twice the window: half of what is left.
        let short = bundle(Some(Duration::from_secs(300)), true);
        assert_eq!(
            next_refresh_at(NOW, &short, window, None, Fraction::ZERO),
            Some(NOW.plus(Duration::from_secs(150)))
        );
    }

    #[test]
    fn nothing_to_schedule_without_a_refresh_token_or_an_expiry() {
        let window = Duration::from_secs(600);
        let no_rt = bundle(Some(Duration::from_secs(3600)), false);
        assert_eq!(
            next_refresh_at(NOW, &no_rt, window, None, Fraction::ZERO),
            None
        );
        let forever = bundle(None, true);
        assert_eq!(
            next_refresh_at(NOW, &forever, window, None, Fraction::ZERO),
            None
        );
    }

    #[test]
    fn a_refresh_token_that_lapses_when_idle_is_refreshed_before_it_does() {
        let idle = Duration::from_secs(30 * 86_400);
        let forever = bundle(None, true);
        // A tenth of the idle period before it lapses (at least a day, at most half of it).
        assert_eq!(
            next_refresh_at(
                NOW,
                &forever,
                Duration::from_secs(600),
                Some(idle),
                Fraction::MAX
            ),
            Some(NOW.plus(Duration::from_secs(27 * 86_400)))
        );
        let short_idle = Duration::from_secs(3 * 86_400);
        assert_eq!(
            next_refresh_at(
                NOW,
                &forever,
                Duration::from_secs(600),
                Some(short_idle),
                Fraction::ZERO
            ),
            Some(NOW.plus(Duration::from_secs(2 * 86_400)))
        );
    }

    #[test]
    fn merge_takes_new_values_and_keeps_what_the_provider_left_out() {
        let old = bundle(Some(Duration::from_secs(10)), true);
        let later = NOW.plus(Duration::from_secs(5));
        let kept = merge(&old, granted(None), later);
        assert_eq!(kept.access_token.expose_secret(), "at-new");
        assert_eq!(
            kept.refresh_token.as_ref().unwrap().expose_secret(),
            "rt-old"
        );
        assert_eq!(kept.id_token.as_ref().unwrap().expose_secret(), "id-old");
        assert_eq!(
            kept.access_expires_at,
            Some(later.plus(Duration::from_secs(3600)))
        );
        assert_eq!(kept.refresh_expires_at, old.refresh_expires_at);
        assert_eq!(kept.extras["instance_url"], "https://old");
        assert_eq!(kept.extras["cloud_id"], "c1");
        assert_eq!(lifetime(&kept), Some(Duration::from_secs(3600)));
        let rotated = merge(&old, granted(Some("rt-new")), later);
        assert_eq!(rotated.refresh_token.unwrap().expose_secret(), "rt-new");
    }

    #[test]
    fn a_fresh_token_satisfies_any_request() {
        let minute = Duration::from_secs(60);
        for asked in [
            Duration::ZERO,
            Duration::from_secs(225),
            Duration::from_secs(3600),
        ] {
            let needed = required_validity(asked, Some(minute));
            assert!(valid_for(Some(NOW.plus(minute)), NOW, needed), "{asked:?}");
            assert!(needed <= asked);
        }
        assert_eq!(
            required_validity(Duration::from_secs(3600), Some(minute)),
            Duration::from_secs(15)
        );
        // Hourly tokens: the default and modest requests are unchanged.
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(
            required_validity(Duration::from_secs(225), hour),
            Duration::from_secs(225)
        );
        // Unknown lifetime (an imported token): the request as asked.
        assert_eq!(
            required_validity(Duration::from_secs(3600), None),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn refresh_ahead_of_short_lived_tokens_leads_by_a_share_of_the_lifetime() {
        let window = Duration::from_secs(600);
        for secs in [10, 20, 60, 600, 3600] {
            let life = Duration::from_secs(secs);
            let mut b = bundle(Some(life), true);
            b.obtained_at = Some(NOW);
            let at = next_refresh_at(NOW, &b, window, None, Fraction::ZERO).unwrap();
            let lead = window.min(life / LIFETIME_SHARE);
            assert_eq!(at, NOW.plus(life).minus(lead), "{secs} s");
            // Whoever refreshes first, the next refresh is at least 3/4 of a lifetime (less
            // jitter) away: never more than once per 3/4 lifetime.
            let earliest = next_refresh_at(NOW, &b, window, None, Fraction::MAX).unwrap();
            assert!(earliest.as_millis() - NOW.as_millis() >= (life * 11 / 16).as_millis() as i64);
        }
        // Hourly tokens keep the 10-minute window.
        let mut hour = bundle(Some(Duration::from_secs(3600)), true);
        hour.obtained_at = Some(NOW);
        assert_eq!(
            next_refresh_at(NOW, &hour, window, None, Fraction::ZERO),
            Some(NOW.plus(Duration::from_secs(3000)))
        );
    }
}
