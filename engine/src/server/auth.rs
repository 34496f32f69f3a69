//! Tokens and roles: which token grants what, and which requests each role
//! may make. Tokens are compared in constant time, so the time an answer
//! takes says nothing about how much of a token was right.

use subtle::ConstantTimeEq;

use crate::protocol::{MessageType, Role};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokensError {
    #[error("token for {role} is shorter than {min} bytes")]
    TooShort { role: &'static str, min: usize },
    #[error("two roles share one token")]
    Shared,
}

/// Shortest token accepted: guessing must be hopeless.
const TOKEN_LENGTH_MIN: usize = 16;

#[derive(Clone, Debug, Default)]
pub struct Tokens {
    tokens: Vec<(Vec<u8>, Role)>,
}

pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Agent => "agent",
        Role::Submitter => "submitter",
        Role::Admin => "admin",
    }
}

impl Tokens {
    /// No tokens: every client is an admin. Only for a server listening on
    /// loopback, which the binary enforces.
    pub fn open() -> Tokens {
        Tokens::default()
    }

    pub fn new(tokens: Vec<(Vec<u8>, Role)>) -> Result<Tokens, TokensError> {
        for (i, (token, role)) in tokens.iter().enumerate() {
            if token.len() < TOKEN_LENGTH_MIN {
                return Err(TokensError::TooShort {
                    role: role_name(*role),
                    min: TOKEN_LENGTH_MIN,
                });
            }
            if tokens[..i].iter().any(|(other, _)| other == token) {
                return Err(TokensError::Shared);
            }
        }
        Ok(Tokens { tokens })
    }

    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The role a token grants, if any. Every configured token is compared,
    /// each in constant time.
    pub fn role_of(&self, token: &[u8]) -> Option<Role> {
        if self.is_open() {
            return Some(Role::Admin);
        }
        let mut found = None;
        for (known, role) in &self.tokens {
            if bool::from(known.as_slice().ct_eq(token)) {
                found = Some(*role);
            }
        }
        found
    }
}

/// Whether a role may send a request.
pub(crate) fn allowed(role: Role, request: MessageType) -> bool {
    use MessageType as M;
    let agent = matches!(
        request,
        M::Register | M::TakeWork | M::Heartbeat | M::Complete
    );
    let submitter = matches!(
        request,
        M::SubmitRun
            | M::AppendJobs
            | M::ChangeJobPriority
            | M::ChangeRunPriority
            | M::CancelJob
            | M::CancelRun
            | M::GetJob
            | M::GetRun
            | M::ExplainJob
            | M::ListQueues
            | M::ListAgents
            | M::ListTagRules
            | M::Watch
    );
    match role {
        Role::Admin => true,
        Role::Agent => agent,
        Role::Submitter => submitter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_grant_their_role_and_nothing_else() {
        let tokens = Tokens::new(vec![
            (b"agent-token-0123456789".to_vec(), Role::Agent),
            (b"admin-token-0123456789".to_vec(), Role::Admin),
        ])
        .unwrap();
        assert_eq!(tokens.role_of(b"agent-token-0123456789"), Some(Role::Agent));
        assert_eq!(tokens.role_of(b"admin-token-0123456789"), Some(Role::Admin));
        assert_eq!(tokens.role_of(b"agent-token-012345678"), None);
        assert_eq!(tokens.role_of(b""), None);
        assert!(Tokens::open().role_of(b"anything").is_some());
        assert_eq!(
            Tokens::new(vec![(b"short".to_vec(), Role::Agent)]).unwrap_err(),
            TokensError::TooShort {
                role: "agent",
                min: 16
            }
        );
    }

    #[test]
    fn roles_allow_their_requests() {
        assert!(allowed(Role::Agent, MessageType::TakeWork));
        assert!(!allowed(Role::Agent, MessageType::SubmitRun));
        assert!(allowed(Role::Submitter, MessageType::SubmitRun));
        assert!(!allowed(Role::Submitter, MessageType::PauseQueue));
        assert!(!allowed(Role::Submitter, MessageType::TakeWork));
        assert!(allowed(Role::Admin, MessageType::PutQueue));
    }
}
