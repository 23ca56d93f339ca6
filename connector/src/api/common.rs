//! Types shared by many endpoints: access levels, dates, user references.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A GitLab role as a number: 5 minimal access, 10 guest, 15 planner, 20 reporter,
/// 25 security manager, 30 developer, 40 maintainer, 50 owner, 60 admin. Any other number
/// parses too, so a level GitLab adds later does not break a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccessLevel(pub u16);

impl AccessLevel {
    pub const NO_ACCESS: Self = Self(0);
    pub const MINIMAL_ACCESS: Self = Self(5);
    pub const GUEST: Self = Self(10);
    pub const PLANNER: Self = Self(15);
    pub const REPORTER: Self = Self(20);
    pub const SECURITY_MANAGER: Self = Self(25);
    pub const DEVELOPER: Self = Self(30);
    pub const MAINTAINER: Self = Self(40);
    pub const OWNER: Self = Self(50);
    pub const ADMIN: Self = Self(60);

    const NAMES: [(&'static str, u16); 10] = [
        ("no_access", 0),
        ("minimal_access", 5),
        ("guest", 10),
        ("planner", 15),
        ("reporter", 20),
        ("security_manager", 25),
        ("developer", 30),
        ("maintainer", 40),
        ("owner", 50),
        ("admin", 60),
    ];

    /// The snake_case name of a known level.
    pub fn name(self) -> Option<&'static str> {
        Self::NAMES
            .iter()
            .find(|(_, v)| *v == self.0)
            .map(|(n, _)| *n)
    }
}

impl fmt::Display for AccessLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Accepts a number (`30`, `"30"`) or a name (`"developer"`, `"Developer"`).
impl FromStr for AccessLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(n) = t.parse::<u16>() {
            return Ok(Self(n));
        }
        let lower = t.to_ascii_lowercase().replace([' ', '-'], "_");
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == lower)
            .map(|(_, v)| Self(*v))
            .ok_or_else(|| {
                format!(
                    "unknown access level {s:?}; use a number or one of: {}",
                    Self::NAMES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

impl Serialize for AccessLevel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for AccessLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AccessLevel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an access level number or name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<AccessLevel, E> {
                u16::try_from(v)
                    .map(AccessLevel)
                    .map_err(|_| E::custom(format!("access level {v} is out of range")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<AccessLevel, E> {
                u16::try_from(v)
                    .map(AccessLevel)
                    .map_err(|_| E::custom(format!("access level {v} is out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AccessLevel, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `expires_at` and similar: GitLab sends a date (`2024-05-01`) in current versions and a
/// timestamp in older ones; both become the UTC date.
pub mod date_or_timestamp {
    use super::*;

    pub fn parse(s: &str) -> Option<NaiveDate> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().or_else(|| {
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc).date_naive())
                .or_else(|| {
                    // "2024-05-01 10:00:00 UTC" (Ruby's default Time#to_s)
                    s.get(..10)
                        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                })
        })
    }

    pub fn serialize<S: Serializer>(d: &Option<NaiveDate>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&d.format("%Y-%m-%d").to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
        let raw: Option<String> = Option::deserialize(d)?;
        match raw {
            None => Ok(None),
            Some(s) if s.trim().is_empty() => Ok(None),
            Some(s) => parse(&s)
                .map(Some)
                .ok_or_else(|| de::Error::custom(format!("not a date or timestamp: {s:?}"))),
        }
    }
}

/// Timestamps GitLab documents as optional; an unparsable one is dropped rather than failing
/// a whole page (these are informational: sign-in and activity times).
pub mod lenient_timestamp {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            None => s.serialize_none(),
        }
    }

    /// A string that parses as RFC 3339 gives a time; anything else (null, a number, an
    /// unparsable string) gives `None`. A visitor rather than a `serde_json::Value`: every
    /// member of every page has timestamps, and this avoids one allocation per field.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        d.deserialize_any(Lenient)
    }

    struct Lenient;

    impl<'de> serde::de::Visitor<'de> for Lenient {
        type Value = Option<DateTime<Utc>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 timestamp or anything else")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(DateTime::parse_from_rfc3339(v)
                .ok()
                .map(|t| t.with_timezone(&Utc)))
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            while a
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            Ok(None)
        }
    }
}

/// The user fields GitLab embeds in members, `created_by` and similar (not a way to name a
/// user in a job: that is [`crate::provision::UserRef`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    pub id: u64,
    pub username: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub web_url: Option<String>,
}

/// `{"message": "..."}` bodies of admin actions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MessageBody {
    #[serde(default)]
    pub message: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_levels_parse_known_future_and_named() {
        let v: Vec<AccessLevel> = serde_json::from_str(r#"[5, 25, 30, 65, "20"]"#).unwrap();
        assert_eq!(
            v,
            vec![
                AccessLevel::MINIMAL_ACCESS,
                AccessLevel::SECURITY_MANAGER,
                AccessLevel::DEVELOPER,
                AccessLevel(65),
                AccessLevel::REPORTER
            ]
        );
        assert_eq!(
            "developer".parse::<AccessLevel>(),
            Ok(AccessLevel::DEVELOPER)
        );
        assert_eq!("Minimal Access".parse::<AccessLevel>(), Ok(AccessLevel(5)));
        assert!(
            "superuser"
                .parse::<AccessLevel>()
                .unwrap_err()
                .contains("maintainer")
        );
        assert_eq!(serde_json::to_string(&AccessLevel::OWNER).unwrap(), "50");
    }

    #[derive(Deserialize)]
    struct E {
        #[serde(default, with = "date_or_timestamp")]
        expires_at: Option<NaiveDate>,
    }

    #[test]
    fn expires_at_accepts_dates_and_timestamps() {
        let d = |s: &str| serde_json::from_str::<E>(s).unwrap().expires_at;
        let may1 = NaiveDate::from_ymd_opt(2024, 5, 1);
        assert_eq!(d(r#"{"expires_at":"2024-05-01"}"#), may1);
        assert_eq!(d(r#"{"expires_at":"2024-05-01T00:00:00.000Z"}"#), may1);
        assert_eq!(
            d(r#"{"expires_at":"2024-05-01T23:30:00-02:00"}"#),
            NaiveDate::from_ymd_opt(2024, 5, 2)
        );
        assert_eq!(d(r#"{"expires_at":null}"#), None);
        assert_eq!(d(r#"{}"#), None);
        assert!(serde_json::from_str::<E>(r#"{"expires_at":"soon"}"#).is_err());
    }

    #[derive(Deserialize)]
    struct T {
        #[serde(default, with = "lenient_timestamp")]
        at: Option<DateTime<Utc>>,
        next: u8,
    }

    /// Anything that is not an RFC 3339 string is `None`, and the fields after it still parse.
    #[test]
    fn lenient_timestamps_take_times_and_ignore_anything_else() {
        let t = |v: &str| {
            let parsed: T = serde_json::from_str(&format!(r#"{{"at":{v},"next":7}}"#)).unwrap();
            assert_eq!(parsed.next, 7, "{v}");
            parsed.at
        };
        assert_eq!(
            t(r#""2024-05-01T23:30:00.000-02:00""#),
            DateTime::parse_from_rfc3339("2024-05-02T01:30:00Z")
                .ok()
                .map(|t| t.with_timezone(&Utc))
        );
        for other in [
            "null",
            r#""yesterday""#,
            "12",
            "-3",
            "1.5",
            "true",
            r#"["2024-05-01T00:00:00Z"]"#,
            r#"{"a":{"b":[1]}}"#,
        ] {
            assert_eq!(t(other), None, "{other}");
        }
        let missing: T = serde_json::from_str(r#"{"next":1}"#).unwrap();
        assert_eq!(missing.at, None);
    }
}
