//! Auth tokens: `--auth-token` and/or `--auth-token-file`, the latter
//! reloaded on SIGHUP.
//!
//! The set is read only when a HELLO arrives (not a hot path), through an
//! `RwLock` holding an `Arc`: a reload builds the new set first and swaps the
//! pointer, so a HELLO never waits on file I/O. Connections that already
//! passed HELLO are not affected by a reload.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub struct AuthTokens {
    /// From `--auth-token`: always accepted, survives reloads.
    fixed: Option<Vec<u8>>,
    file: Option<PathBuf>,
    current: RwLock<Arc<Vec<Vec<u8>>>>,
}

impl AuthTokens {
    /// `None` when neither a token nor a token file is configured (no auth).
    pub fn new(token: Option<&str>, file: Option<&Path>) -> Result<Option<AuthTokens>, String> {
        if token.is_none() && file.is_none() {
            return Ok(None);
        }
        let fixed = token.map(|t| t.as_bytes().to_vec());
        let tokens = build(fixed.as_deref(), file)?;
        if tokens.is_empty() {
            tracing::warn!("auth is on but the token file holds no token: every HELLO is refused");
        }
        Ok(Some(AuthTokens {
            fixed,
            file: file.map(Path::to_path_buf),
            current: RwLock::new(Arc::new(tokens)),
        }))
    }

    /// Re-reads the token file. On error the previous set stays in force.
    /// Returns how many tokens are now accepted.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(file) = &self.file else {
            return Ok(self.snapshot().len());
        };
        let tokens = build(self.fixed.as_deref(), Some(file))?;
        let n = tokens.len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tokens);
        Ok(n)
    }

    pub fn has_file(&self) -> bool {
        self.file.is_some()
    }

    fn snapshot(&self) -> Arc<Vec<Vec<u8>>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True if `given` equals one of the tokens. Every token is compared in
    /// full, in constant time for its length, whatever matched before.
    pub fn check(&self, given: &[u8]) -> bool {
        let set = self.snapshot();
        let mut ok = 0u8;
        for t in set.iter() {
            ok |= token_matches(given, t) as u8;
        }
        ok == 1
    }
}

fn build(fixed: Option<&[u8]>, file: Option<&Path>) -> Result<Vec<Vec<u8>>, String> {
    let mut tokens = Vec::new();
    if let Some(t) = fixed {
        tokens.push(t.to_vec());
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read auth token file {}: {e}", path.display()))?;
        tokens.extend(parse_token_file(&text));
    }
    Ok(tokens)
}

/// One token per line; surrounding whitespace, blank lines and lines starting
/// with `#` are ignored. A token is at most 255 bytes (HELLO's length field).
pub fn parse_token_file(text: &str) -> Vec<Vec<u8>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| {
            let ok = l.len() <= 255;
            if !ok {
                tracing::warn!("ignoring an auth token longer than 255 bytes");
            }
            ok
        })
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

/// Constant-time comparison so a token cannot be guessed byte by byte: the
/// time depends only on the expected token's length.
pub fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = (given.len() != expected.len()) as u8;
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(token_matches(b"secret", b"secret"));
        assert!(!token_matches(b"secreT", b"secret"));
        assert!(!token_matches(b"secret1", b"secret"));
        assert!(!token_matches(b"", b"secret"));
        assert!(!token_matches(b"s", b""));
    }

    #[test]
    fn token_file_syntax() {
        let t = parse_token_file("# keys\n\n  alpha  \n#beta\nbeta\n\t\n");
        assert_eq!(t, vec![b"alpha".to_vec(), b"beta".to_vec()]);
    }

    #[test]
    fn reload_swaps_the_set_and_keeps_the_fixed_token() {
        let dir = std::env::temp_dir().join(format!("gavel-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        std::fs::write(&path, "a\n").unwrap();
        let auth = AuthTokens::new(Some("fixed"), Some(&path))
            .unwrap()
            .unwrap();
        assert!(auth.check(b"a") && auth.check(b"fixed") && !auth.check(b"b"));
        std::fs::write(&path, "b\n").unwrap();
        assert_eq!(auth.reload().unwrap(), 2);
        assert!(!auth.check(b"a") && auth.check(b"b") && auth.check(b"fixed"));
        std::fs::remove_file(&path).unwrap();
        assert!(auth.reload().is_err());
        assert!(auth.check(b"b"), "a failed reload keeps the previous set");
        let _ = std::fs::remove_dir(&dir);
    }
}
