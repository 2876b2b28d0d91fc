//! Entry point for the `fuzz/` targets into the image-file parsers that are otherwise private.
//!
//! The image's `/etc/passwd` and `/etc/group` are bytes from the registry like any other layer
//! content; this runs the same resolution `run` does on them. Not a stable API: only the fuzz
//! targets call it.

use std::path::Path;

/// Resolves `user` (`--user`, or the image config's `User`; `None` = root) against the image's
/// passwd and group text, as `(uid, gid, supplementary groups, home)`.
pub fn user(
    user: Option<&str>,
    passwd: &str,
    group: &str,
) -> Result<(u32, u32, Vec<u32>, String), crate::Error> {
    let id = crate::user::resolve(
        user,
        passwd,
        group,
        Path::new("/etc/passwd"),
        Path::new("/etc/group"),
    )?;
    Ok((id.uid, id.gid, id.groups, id.home))
}
