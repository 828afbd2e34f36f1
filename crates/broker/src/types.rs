//! Parse, don't validate: domain value types that cannot hold invalid input. Each parser names
//! the request field in its error so the server can report a `BadRequest` field violation.

use crate::error::{BrokerError, FieldViolation};
use std::fmt;

/// Maximum length of a display name, in characters.
pub const DISPLAY_NAME_MAX: usize = 100;
/// Maximum length of a description, in characters.
pub const DESCRIPTION_MAX: usize = 1000;
const ID_MAX: usize = 128;
const EMAIL_MAX: usize = 254;
const SCOPE_MAX: usize = 512;
const SCOPES_MAX: usize = 200;

type Parsed<T> = Result<T, FieldViolation>;

fn check_id(field: &str, raw: &str, max: usize) -> Parsed<()> {
    if raw.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if raw.chars().count() > max {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if !raw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'))
    {
        return Err(FieldViolation::new(
            field,
            "may contain only ASCII letters, digits and - _ . : @",
        ));
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);
        impl $name {
            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// Opaque, URL-safe credential id (a UUIDv7 in canonical form).
    CredentialId
);
string_newtype!(
    /// Workspace id, as issued by the platform.
    WorkspaceId
);
string_newtype!(
    /// Provider catalog id: lowercase letters, digits, `-` and `_`.
    ProviderId
);
string_newtype!(
    /// End-user id, as issued by the platform.
    UserId
);
string_newtype!(
    /// A validated, lowercased email address.
    Email
);
string_newtype!(
    /// A credential's display name: non-empty, at most 100 characters, no control characters.
    DisplayName
);
string_newtype!(
    /// A credential's description: at most 1000 characters; newlines allowed, other controls not.
    Description
);

impl CredentialId {
    /// Parses a credential id from request field `field`.
    pub fn parse(field: &str, raw: &str) -> Parsed<Self> {
        // The canonical spelling only (lowercase, hyphenated), compared without allocating.
        let mut canonical = [0u8; uuid::fmt::Hyphenated::LENGTH];
        match uuid::Uuid::try_parse(raw) {
            Ok(u) if u.hyphenated().encode_lower(&mut canonical) == raw => Ok(Self(raw.to_owned())),
            _ if raw.is_empty() => Err(FieldViolation::new(field, "must not be empty")),
            _ => Err(FieldViolation::new(field, "is not a credential id")),
        }
    }
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().hyphenated().to_string())
    }
    /// Wraps an id read back from storage.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }
}

impl WorkspaceId {
    /// Parses a workspace id from request field `field`.
    pub fn parse(field: &str, raw: &str) -> Parsed<Self> {
        check_id(field, raw, ID_MAX).map(|()| Self(raw.to_owned()))
    }
}

impl UserId {
    /// Parses a user id from request field (or metadata key) `field`.
    pub fn parse(field: &str, raw: &str) -> Parsed<Self> {
        check_id(field, raw, ID_MAX).map(|()| Self(raw.to_owned()))
    }
}

impl ProviderId {
    /// Parses a provider id from request field `field`.
    pub fn parse(field: &str, raw: &str) -> Parsed<Self> {
        if raw.is_empty() {
            return Err(FieldViolation::new(field, "must not be empty"));
        }
        let ok = raw.len() <= 64
            && raw.starts_with(|c: char| c.is_ascii_lowercase())
            && raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldViolation::new(
                field,
                "must be 1-64 lowercase letters, digits, - or _, starting with a letter",
            ))
        }
    }
}

impl Email {
    /// Parses and lowercases an email address from request field `field`.
    pub fn parse(field: &str, raw: &str) -> Parsed<Self> {
        let s = raw.trim().to_lowercase();
        let valid = s.len() <= EMAIL_MAX
            && s.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains('@')
            })
            && !s.chars().any(|c| {
                c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"')
            });
        if valid {
            Ok(Self(s))
        } else if s.is_empty() {
            Err(FieldViolation::new(field, "must not be empty"))
        } else {
            Err(FieldViolation::new(field, "is not a valid email address"))
        }
    }
}

/// `raw` trimmed, at most `max` characters, without control characters other than `allowed`.
fn free_text(field: &str, raw: &str, max: usize, allowed: Option<char>) -> Parsed<String> {
    let s = raw.trim();
    if s.chars().count() > max {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if s.chars().any(|c| c.is_control() && Some(c) != allowed) {
        let description = match allowed {
            None => "must not contain control characters",
            Some(_) => "must not contain control characters other than newlines",
        };
        return Err(FieldViolation::new(field, description));
    }
    Ok(s.to_owned())
}

impl DisplayName {
    /// Parses a display name (surrounding white space is trimmed).
    pub fn parse(field: &str, raw: &str) -> Parsed<Self> {
        if raw.trim().is_empty() {
            return Err(FieldViolation::new(field, "must not be empty"));
        }
        free_text(field, raw, DISPLAY_NAME_MAX, None).map(Self)
    }
    /// Wraps a name read back from storage.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }
}

impl Description {
    /// Parses a description (surrounding white space is trimmed; may be empty).
    pub fn parse(field: &str, raw: &str) -> Parsed<Self> {
        free_text(field, raw, DESCRIPTION_MAX, Some('\n')).map(Self)
    }
    /// Wraps a description read back from storage.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }
}

/// A set of OAuth scopes, deduplicated, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes(Vec<String>);

impl Scopes {
    /// Parses scopes from request field `field`; each must be non-empty without white space.
    pub fn parse<S: AsRef<str>>(field: &str, raw: &[S]) -> Parsed<Self> {
        if raw.len() > SCOPES_MAX {
            return Err(FieldViolation::new(
                field,
                format!("must list at most {SCOPES_MAX} scopes"),
            ));
        }
        let mut out: Vec<String> = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            let s = s.as_ref();
            if s.is_empty()
                || s.len() > SCOPE_MAX
                || s.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(FieldViolation::new(
                    format!("{field}[{i}]"),
                    "must be a non-empty scope without white space",
                ));
            }
            if !out.iter().any(|o| o == s) {
                out.push(s.to_owned());
            }
        }
        Ok(Self(out))
    }
    /// Scopes read back from storage (space separated).
    pub fn from_stored(s: &str) -> Self {
        Self(s.split_whitespace().map(str::to_owned).collect())
    }
    /// Space-separated form for storage and OAuth requests.
    pub fn to_space_separated(&self) -> String {
        self.0.join(" ")
    }
    /// The scopes.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// The third-party account a credential is connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderAccount {
    /// The provider's stable account id.
    pub subject: String,
    /// Email or login, for display.
    pub label: String,
}

impl ProviderAccount {
    /// Parses an account from request field `field` (`subject` required, `label` optional).
    pub fn parse(field: &str, subject: &str, label: &str) -> Result<Self, Vec<FieldViolation>> {
        let mut v = Vec::new();
        let subject = subject.trim();
        if subject.is_empty() {
            v.push(FieldViolation::new(
                format!("{field}.subject"),
                "must not be empty",
            ));
        } else if subject.len() > 256 || subject.chars().any(char::is_control) {
            v.push(FieldViolation::new(
                format!("{field}.subject"),
                "must be at most 256 characters without control characters",
            ));
        }
        let label = label.trim();
        if label.len() > 256 || label.chars().any(char::is_control) {
            v.push(FieldViolation::new(
                format!("{field}.label"),
                "must be at most 256 characters without control characters",
            ));
        }
        if v.is_empty() {
            Ok(Self {
                subject: subject.to_owned(),
                label: label.to_owned(),
            })
        } else {
            Err(v)
        }
    }
}

/// Collects field violations while parsing a request, so one response names every bad field.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Keeps the value, or records the violation and returns `None`.
    pub fn check<T>(&mut self, r: Parsed<T>) -> Option<T> {
        match r {
            Ok(t) => Some(t),
            Err(v) => {
                self.0.push(v);
                None
            }
        }
    }
    /// Records several violations at once.
    pub fn check_many<T>(&mut self, r: Result<T, Vec<FieldViolation>>) -> Option<T> {
        match r {
            Ok(t) => Some(t),
            Err(v) => {
                self.0.extend(v);
                None
            }
        }
    }
    /// Records a violation.
    pub fn push(&mut self, v: FieldViolation) {
        self.0.push(v);
    }
    /// `Ok` when nothing was recorded, else the INVALID_ARGUMENT error naming every field.
    pub fn finish(self) -> Result<(), BrokerError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(BrokerError::InvalidArgument(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_name_rules() {
        assert_eq!(
            DisplayName::parse("f", "  Work Gmail ").unwrap().as_str(),
            "Work Gmail"
        );
        assert!(DisplayName::parse("f", "   ").is_err());
        assert!(DisplayName::parse("f", "a\u{7}b").is_err());
        assert!(DisplayName::parse("f", &"x".repeat(DISPLAY_NAME_MAX)).is_ok());
        let e = DisplayName::parse("f", &"x".repeat(DISPLAY_NAME_MAX + 1)).unwrap_err();
        assert_eq!(e.field, "f");
    }

    #[test]
    fn description_allows_newlines_only() {
        assert!(Description::parse("d", "line1\nline2").is_ok());
        assert!(Description::parse("d", "tab\there").is_err());
        assert!(Description::parse("d", "").is_ok());
    }

    #[test]
    fn email_is_lowercased_and_checked() {
        assert_eq!(
            Email::parse("e", " Alice@Example.COM ").unwrap().as_str(),
            "alice@example.com"
        );
        for bad in ["", "alice", "a@b", "a@@b.c", "a b@c.d", "<a@b.c>", "a@.b.c"] {
            assert!(Email::parse("e", bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn credential_id_is_canonical_uuid() {
        let id = CredentialId::generate();
        assert_eq!(CredentialId::parse("id", id.as_str()).unwrap(), id);
        assert!(CredentialId::parse("id", &id.as_str().to_uppercase()).is_err());
        assert!(CredentialId::parse("id", "../etc/passwd").is_err());
        assert!(CredentialId::parse("id", "").is_err());
    }

    #[test]
    fn scopes_deduplicate_and_reject_spaces() {
        let s = Scopes::parse("s", &["a", "b", "a"]).unwrap();
        assert_eq!(s.to_space_separated(), "a b");
        assert_eq!(Scopes::parse("s", &["a", "b c"]).unwrap_err().field, "s[1]");
    }

    #[test]
    fn provider_and_workspace_ids() {
        assert!(ProviderId::parse("p", "google-drive").is_ok());
        assert!(ProviderId::parse("p", "Gmail").is_err());
        assert!(WorkspaceId::parse("w", "ws_1").is_ok());
        assert!(WorkspaceId::parse("w", "ws/1").is_err());
    }
}
