//! The challenges in a registry's `WWW-Authenticate` header (RFC 7235), parsed with the
//! `http-auth` crate: a small state-machine parser of the full grammar (quoted strings with
//! escapes, several challenges in one header), itself fuzzed against a reference parser.

/// What a registry's challenge asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// The challenge kiln answers among those in one `WWW-Authenticate` value: a Bearer challenge
/// that names its realm, else Basic; `None` when there is neither. Challenges before a syntax
/// error still count.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let mut basic = false;
    for parsed in http_auth::parser::ChallengeParser::new(header) {
        let Ok(challenge) = parsed else { break };
        let param = |name: &str| {
            challenge
                .params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.to_unescaped())
        };
        if challenge.scheme.eq_ignore_ascii_case("bearer") {
            if let Some(realm) = param("realm") {
                return Some(Challenge::Bearer {
                    realm,
                    service: param("service"),
                });
            }
        } else if challenge.scheme.eq_ignore_ascii_case("basic") {
            basic = true;
        }
    }
    basic.then_some(Challenge::Basic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed() {
        let c = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#).unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="kiln-test""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn escapes_case_and_several_challenges_are_understood() {
        assert_eq!(
            parse_challenge(r#"basic realm="x", BEARER REALM="https://a/t\"q\"", Service=s"#),
            Some(Challenge::Bearer {
                realm: r#"https://a/t"q""#.into(),
                service: Some("s".into())
            })
        );
        // A Bearer challenge without a realm cannot be answered; Basic can.
        assert_eq!(
            parse_challenge(r#"Bearer service="s", Basic realm="r""#),
            Some(Challenge::Basic)
        );
        // What comes before a syntax error still counts; what comes after does not.
        assert_eq!(
            parse_challenge(r#"Basic realm="r", Bearer realm="unterminated"#),
            Some(Challenge::Basic)
        );
    }
}
