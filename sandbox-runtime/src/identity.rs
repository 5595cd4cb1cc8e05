//! Who an isolated instance runs as: an unprivileged uid and gid of its
//! function's own, from the worker's range (`--instance-uids`), that no
//! account of the host has. File modes and socket permissions then hold
//! against the function as against any other user: a root-only file or
//! socket of the host is out of its reach even where it is visible.
//!
//! One identity per function, derived from its name (FNV-1a into the
//! range), so every instance of a function on every worker with the same
//! range writes its `writable_paths` as the same owner, and a file one
//! instance left there is the next one's too. Two functions whose names
//! fall on the same id share an owner only where both are given the same
//! host directory: neither sees the other's processes, root or network.
//!
//! `writable_paths` are made writable for the identity with a POSIX ACL
//! entry (`user:<uid>:rwx`, also as the directory's default, so what
//! anyone creates there later stays reachable for it): the directory's
//! owner and mode stay as they were. A file system without ACLs needs the
//! directory to be writable for that uid already; the start says so
//! otherwise.

use std::io;
use std::path::Path;

/// The default range: clear of the ids distributions, systemd and
/// container user namespaces hand out.
pub const DEFAULT_RANGE: &str = "2000000000-2001048575";

/// A range of uids (and the same gids) for instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    first: u32,
    count: u32,
}

impl std::str::FromStr for IdRange {
    type Err = String;
    fn from_str(s: &str) -> Result<IdRange, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: FIRST-LAST expected"))?;
        let parse = |x: &str| {
            x.trim()
                .parse::<u32>()
                .map_err(|e| format!("{s:?}: {x:?}: {e}"))
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if first < 65_536 || last < first || last >= u32::MAX - 1 {
            return Err(format!(
                "{s:?}: the range must start at 65536 or above and end below 4294967294"
            ));
        }
        Ok(IdRange {
            first,
            count: last - first + 1,
        })
    }
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.first + (self.count - 1))
    }
}

impl Default for IdRange {
    fn default() -> Self {
        DEFAULT_RANGE.parse().expect("default range")
    }
}

impl IdRange {
    /// The uid (and gid) of a function's instances.
    pub fn for_function(&self, function: &str) -> u32 {
        // FNV-1a: stable across builds and machines (std's hasher is not).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in function.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.first + (h % u64::from(self.count)) as u32
    }

    fn contains(&self, id: u32) -> bool {
        id >= self.first && id - self.first < self.count
    }

    /// Refuses a range that holds an id of an account or group of the host
    /// (`/etc/passwd`, `/etc/group`): a function would own that account's
    /// files.
    pub fn check_host(&self) -> Result<(), String> {
        for (file, what) in [("/etc/passwd", "user"), ("/etc/group", "group")] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for line in text.lines() {
                let mut f = line.split(':');
                let (name, id) = (f.next(), f.nth(1).and_then(|x| x.parse::<u32>().ok()));
                if let (Some(name), Some(id)) = (name, id)
                    && self.contains(id)
                {
                    return Err(format!(
                        "--instance-uids {self} holds {id}, the {what} {name:?} of this host: pick a range no account uses"
                    ));
                }
            }
        }
        Ok(())
    }
}

const ACL_ACCESS: &std::ffi::CStr = c"system.posix_acl_access";
const ACL_DEFAULT: &std::ffi::CStr = c"system.posix_acl_default";
const ACL_VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;

/// One ACL entry: (tag, permissions, id).
type Entry = (u16, u16, u32);

fn parse_acl(b: &[u8]) -> Option<Vec<Entry>> {
    if b.len() < 4 || u32::from_le_bytes(b[..4].try_into().ok()?) != ACL_VERSION {
        return None;
    }
    let body = &b[4..];
    if !body.len().is_multiple_of(8) {
        return None;
    }
    Some(
        body.chunks_exact(8)
            .map(|c| {
                (
                    u16::from_le_bytes([c[0], c[1]]),
                    u16::from_le_bytes([c[2], c[3]]),
                    u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect(),
    )
}

fn encode_acl(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 8 * entries.len());
    out.extend_from_slice(&ACL_VERSION.to_le_bytes());
    for &(tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// `acl` (or the minimal ACL of `mode` when there is none) with `uid`
/// given rwx, the mask widened to cover it, in the kernel's order.
fn with_user(acl: Option<Vec<Entry>>, mode: u32, uid: u32) -> Vec<Entry> {
    let mut e = acl.unwrap_or_else(|| {
        vec![
            (USER_OBJ, ((mode >> 6) & 7) as u16, UNDEFINED_ID),
            (GROUP_OBJ, ((mode >> 3) & 7) as u16, UNDEFINED_ID),
            (OTHER, (mode & 7) as u16, UNDEFINED_ID),
        ]
    });
    e.retain(|&(tag, _, id)| !(tag == USER && id == uid) && tag != MASK);
    e.push((USER, 7, uid));
    // The mask bounds every named entry and the owning group: the union of
    // them, as setfacl computes it.
    let mask = e
        .iter()
        .filter(|(tag, _, _)| matches!(*tag, USER | GROUP | GROUP_OBJ))
        .fold(0, |m, (_, p, _)| m | p);
    e.push((MASK, mask, UNDEFINED_ID));
    e.sort_by_key(|&(tag, _, id)| (tag, if tag & (USER | GROUP) != 0 { id } else { 0 }));
    e
}

fn get_xattr(path: &std::ffi::CStr, name: &std::ffi::CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 1024];
    // SAFETY: the buffer is ours and its length is passed.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

fn set_xattr(path: &std::ffi::CStr, name: &std::ffi::CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: plain syscall on buffers we own.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Makes the directory `dir` writable for `uid` (see the module's docs).
pub fn grant(dir: &Path, uid: u32) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir)?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("a NUL in the path"))?;
    let access = get_xattr(&c, ACL_ACCESS)?.and_then(|b| parse_acl(&b));
    let new = with_user(access, meta.mode(), uid);
    match set_xattr(&c, ACL_ACCESS, &encode_acl(&new)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            let writable =
                (meta.uid() == uid && meta.mode() & 0o300 == 0o300) || meta.mode() & 0o003 == 0o003;
            return match writable {
                true => Ok(()),
                false => Err(io::Error::other(format!(
                    "its file system has no POSIX ACLs: make it writable for uid {uid} yourself"
                ))),
            };
        }
        Err(e) => return Err(e),
    }
    let default = get_xattr(&c, ACL_DEFAULT)?.and_then(|b| parse_acl(&b));
    let new = with_user(default, meta.mode(), uid);
    set_xattr(&c, ACL_DEFAULT, &encode_acl(&new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_ids_are_stable() {
        let r: IdRange = DEFAULT_RANGE.parse().unwrap();
        assert_eq!(r.to_string(), DEFAULT_RANGE);
        let id = r.for_function("echo");
        assert!(r.contains(id));
        assert_eq!(id, r.for_function("echo"));
        assert_ne!(id, r.for_function("echo2"));
        for bad in ["1-2", "100000", "200000-100000", "70000-4294967295", "a-b"] {
            assert!(bad.parse::<IdRange>().is_err(), "{bad}");
        }
        let one: IdRange = "70000-70000".parse().unwrap();
        assert_eq!(one.for_function("anything"), 70000);
    }

    #[test]
    fn a_user_entry_is_added_with_a_mask_in_kernel_order() {
        // A 0750 directory with no ACL: owner rwx, group r-x, other ---.
        let e = with_user(None, 0o750, 2_000_000_001);
        assert_eq!(
            e,
            vec![
                (USER_OBJ, 7, UNDEFINED_ID),
                (USER, 7, 2_000_000_001),
                (GROUP_OBJ, 5, UNDEFINED_ID),
                (MASK, 7, UNDEFINED_ID),
                (OTHER, 0, UNDEFINED_ID),
            ]
        );
        // Granting again changes nothing; other named users stay.
        let mut with_other = e.clone();
        with_other.insert(1, (USER, 5, 1000));
        let again = with_user(Some(with_other), 0o750, 2_000_000_001);
        assert_eq!(again.len(), 6);
        assert_eq!(again[1], (USER, 5, 1000));
        assert_eq!(again[2], (USER, 7, 2_000_000_001));
        assert_eq!(parse_acl(&encode_acl(&again)), Some(again));
    }

    #[test]
    fn a_granted_directory_is_writable_for_that_uid_only() {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        match grant(dir.path(), 2_000_000_002) {
            Ok(()) => {}
            // A file system without ACLs (some CI tmpfs): nothing to check.
            Err(e) if e.to_string().contains("no POSIX ACLs") => return,
            Err(e) => panic!("{e}"),
        }
        let c = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        let acl = parse_acl(&get_xattr(&c, ACL_ACCESS).unwrap().unwrap()).unwrap();
        assert!(acl.contains(&(USER, 7, 2_000_000_002)), "{acl:?}");
        assert!(acl.contains(&(OTHER, 0, UNDEFINED_ID)), "{acl:?}");
        let def = parse_acl(&get_xattr(&c, ACL_DEFAULT).unwrap().unwrap()).unwrap();
        assert!(def.contains(&(USER, 7, 2_000_000_002)), "{def:?}");
    }
}
